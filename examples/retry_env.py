from rlhf.envs import StepResult


class RetryEnv:
    def reset(self, row: dict) -> list[dict]:
        self.answer = str(row["answer"])
        return row["messages"]

    def step(self, action_text: str) -> StepResult:
        if self.answer in action_text:
            return StepResult(observation=None, reward=1.0, done=True)
        return StepResult(observation="Not quite; try again.")
