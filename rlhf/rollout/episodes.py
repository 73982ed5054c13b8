"""Multi-turn episodes on top of any rollout engine: the policy acts, an environment answers, turn after turn.

All episodes of a call advance together, one engine call per turn:

- turn 1 is one `engine.generate(prompt_ids, G, sampling)` call (a prompt's prefill shared by its G episodes), with
  the environment's stop strings (e.g. a tool call's closing tag) added to `sampling.stop`;
- each running episode's action text goes to its own environment's `step`; an observation is appended as TOKEN IDS:
  the chat template's rendering of the observation turn (for SmolLM2 `<|im_end|>\\n<|im_start|>user\\n...<|im_end|>
  \\n<|im_start|>assistant\\n`), obtained by rendering the template around the observation and tokenising only the
  observation turn's text. The history is never decoded and re-encoded (decode -> encode is not bijective), so the
  trainer scores exactly the tokens the sampler produced;
- the next turn is one `engine.generate(histories_of_running_episodes, 1, sampling)` call, with max_new_tokens capped
  by the largest remaining token budget (each episode's own budget then cuts its turn); episodes whose environment
  said done, that reached `max_turns`, or whose budget is spent leave the batch.

Each turn re-prefills the running episodes' whole histories (the engine interface takes token ids, not caches): the
cost grows with turns x history length, acceptable at a few turns of short observations.

The episode's ids are the concatenation of sampled and observation ids; `action_mask` is 1 exactly on sampled ids and
the behaviour log-probs are the engine's on sampled ids, 0 on observation ids. A prompt's G episodes stay consecutive.

An environment's optional `tool_schemas` go to the chat template (`tools=`) with the first prompt, its optional
`final_reward()` is added once the episode ends (however it ended), and the environments stay open in `Episodes` for
the reward functions (`environments=`) until `Episodes.close()`; episodes that fail close them at once.

Lockstep: under ZeRO-3 an engine call gathers the sharded weights (a collective), so every rank must make the same
number of calls. `any_running(flag)` (an all-reduce across ranks) decides whether another turn happens; a rank whose
episodes have all ended then makes a one-token dummy call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from rlhf.data import encode_prompt, left_pad
from rlhf.envs.base import Environment, StepResult
from rlhf.rollout.types import Rollout, SamplingParams

if TYPE_CHECKING:
    from rlhf.data import PromptSet
    from rlhf.rollout.engine import Engine

log = logging.getLogger("rlhf")
_MARKER = "\x00ACTION\x00"


class ObservationTokens:
    """Token ids of an observation turn as the chat template renders it after an assistant turn.

    The template is rendered once around a marker action followed by the observation messages (with the generation
    prompt), and the text after the marker is tokenised on its own: the end of the assistant turn, the observation
    turn(s), the start of the next assistant turn. When the action already ended with the end-of-turn token, that
    token's text is not repeated."""

    def __init__(self, tokenizer, default_role: str = "user"):
        self.tokenizer = tokenizer
        self.default_role = default_role

    def messages(self, observation: list[dict] | str) -> list[dict]:
        if isinstance(observation, str):
            return [{"role": self.default_role, "content": observation}]
        if not all(isinstance(m, dict) and "role" in m and "content" in m for m in observation):
            raise ValueError(
                f"an environment's observation must be a string or chat messages ({{role, content}}), got "
                f"{observation!r:.200}"
            )
        return [dict(m) for m in observation]

    def text(self, observation: list[dict] | str) -> str:
        """The observation turn's text, starting right after the assistant's action."""
        msgs = self.messages(observation)
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            return "\n" + "\n".join(str(m["content"]) for m in msgs) + "\n"
        around = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _MARKER}, *msgs]
        rendered = tok.apply_chat_template(around, tokenize=False, add_generation_prompt=True)
        if _MARKER not in rendered:
            raise ValueError("the chat template drops the assistant's text; observations cannot be placed after it")
        return rendered.split(_MARKER, 1)[1]

    def __call__(self, observation: list[dict] | str, last_action_id: int | None) -> list[int]:
        """[n] ids of the observation turn; `last_action_id` is the action's last sampled token (None: no action)."""
        text = self.text(observation)
        if last_action_id is not None:
            last = self.tokenizer.decode([last_action_id], skip_special_tokens=False)
            if last in self.tokenizer.all_special_tokens and text.startswith(last):
                text = text[len(last) :]  # the action already closed its turn
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass
class Episodes:
    """B = prompts x G finished episodes, their environments still open (reward functions may read them; `close()`
    after scoring)."""

    rollout: Rollout
    final_texts: list[str]  # [B] the last turn's text: what the recipe's reward functions score
    env_rewards: Tensor  # [B] float32: the environment's rewards summed over the turns, plus its final_reward()
    stats: dict[str, Tensor]  # {key: [B] float32}: `turns`, `observation_tokens` and the environments' metrics()
    engine_calls: int  # generate calls made (the same on every rank)
    envs: list[Environment] = field(default_factory=list)  # [B] the episodes' environments

    def scoring(self, reward_weight: float) -> dict:
        """`score_rollout` keywords: the reward functions score the last turn, the environment's reward adds with
        `reward_weight`, functions that accept `environments` get the environments (a wrapper's `unwrapped`)."""
        environments = [getattr(e, "unwrapped", e) for e in self.envs]
        return {
            "completions": self.final_texts,
            "extra": {"env": (self.env_rewards, reward_weight)},
            "environments": environments if len(environments) == len(self.final_texts) else None,
        }

    def close(self) -> None:
        """Close every episode's environment (`close()` where it has one), once."""
        envs, self.envs = self.envs, []
        close_environments(envs)


def close_environments(envs: list[Environment]) -> None:
    """`close()` of each environment that has one; a failure is logged and the others are still closed."""
    for env in envs:
        close = getattr(env, "close", None)
        if callable(close):
            try:
                close()
            except Exception as e:
                log.warning("an environment's close() failed: %s: %s", type(e).__name__, e)


@dataclass
class _Episode:
    env: Environment
    prompt: list[int]
    ids: list[int]
    action: list[int]
    logprobs: list[float]
    reward: float = 0.0
    turns: int = 0
    observation_tokens: int = 0
    last_text: str = ""
    truncated: bool = False


def first_observations(envs: list[Environment], rows: list[dict], group_size: int) -> list[list[dict]]:
    """Reset every episode's environment; a prompt's G environments must give the same first messages."""
    out = []
    for n, row in enumerate(rows):
        msgs = [envs[n * group_size + g].reset(row) for g in range(group_size)]
        if any(m != msgs[0] for m in msgs[1:]):
            raise ValueError(
                "an environment's reset(row) gave different first messages for the same row; a prompt's "
                f"{group_size} episodes share their prompt, so reset must depend only on the row"
            )
        out.append(msgs[0])
    return out


def run_episodes(
    engine: Engine,
    tokenizer,
    make_env: Callable[[], Environment],
    rows: list[dict],
    group_size: int,
    sampling: SamplingParams,
    max_turns: int,
    max_tokens: int,
    any_running: Callable[[bool], bool] | None = None,
    batch_size: int | None = None,
) -> Episodes:
    """`group_size` episodes per row, each of at most `max_turns` policy turns and `max_tokens` episode tokens
    (sampled + observation). `any_running(local_flag)` returns whether any rank still has a running episode (None:
    this process alone)."""
    G = group_size
    envs: list[Environment] = []
    try:
        for _ in range(len(rows) * G):
            envs.append(make_env())
        firsts = first_observations(envs, rows, G)
        # an environment may hand the chat template JSON schemas of its tools (`tool_schemas`, rendered by `tools=`)
        schemas = [getattr(envs[n * G], "tool_schemas", None) for n in range(len(firsts))]
        prompts = [encode_prompt(tokenizer, m, s) for m, s in zip(firsts, schemas)]
        eps = [_Episode(env, prompts[i // G], [], [], []) for i, env in enumerate(envs)]
        extra = [s for s in getattr(envs[0], "stop_strings", []) or [] if s not in sampling.stop] if envs else []
        stop = [*sampling.stop, *extra]
        render = ObservationTokens(tokenizer, getattr(envs[0], "observation_role", "user") if envs else "user")
        running, calls = list(range(len(eps))), 0
        for turn in range(max_turns):
            if not (any_running(bool(running)) if any_running is not None else running):
                break
            calls += 1
            if not running:  # lockstep: another rank still decodes, and the call may be a collective
                dummy = [prompts[0] if prompts else [tokenizer.eos_token_id]]
                engine.generate(dummy, 1, replace(sampling, stop=[], max_new_tokens=1))
                continue
            budget = {i: max_tokens - len(eps[i].ids) for i in running}
            new = max(1, min(sampling.max_new_tokens, max(budget.values())))
            params = replace(sampling, stop=stop, max_new_tokens=new)
            if turn == 0:
                roll = engine.generate(prompts, G, params, batch_size)
            else:
                roll = engine.generate([eps[i].prompt + eps[i].ids for i in running], 1, params, batch_size)
            still = []
            for j, i in enumerate(running):
                last = turn == max_turns - 1
                if _take_turn(eps[i], roll, j, budget[i], tokenizer, render, last_turn=last, max_tokens=max_tokens):
                    still.append(i)
            running = still
        for i in running:  # reached max_turns while the environment wanted more
            eps[i].truncated = True
        for e in eps:  # the finished episode's own score, however it ended (optional `final_reward`)
            final = getattr(e.env, "final_reward", None)
            if callable(final):
                e.reward += float(final())
        return _assemble(eps, prompts, G, sampling.logprob_temperature, tokenizer, calls, make_env)
    except BaseException:
        close_environments(envs)
        raise


def _take_turn(
    ep: _Episode, roll: Rollout, j: int, budget: int, tokenizer, render, last_turn: bool, max_tokens: int
) -> bool:
    """Append row j of `roll` (cut to the episode's budget) to the episode, step its environment and append the
    observation. Returns whether the episode goes on."""
    m = roll.completion_mask[j].bool()
    ids = roll.completion_ids[j][m].tolist()
    cut = len(ids) > budget
    ids, logps = ids[:budget], roll.logprobs[j][m].tolist()[:budget]
    ep.ids += ids
    ep.action += [1] * len(ids)
    ep.logprobs += logps
    ep.turns += 1
    ep.last_text = tokenizer.decode(ids, skip_special_tokens=True) if cut else roll.texts[j]
    result = ep.env.step(ep.last_text)
    if not isinstance(result, StepResult):
        raise TypeError(f"an environment's step() must return rlhf.envs.StepResult, got {type(result).__name__}")
    ep.reward += float(result.reward)
    ep.truncated = bool(roll.truncated[j]) or cut
    if result.done:
        return False
    if last_turn or cut:
        ep.truncated = True
        return False
    obs = [] if result.observation is None else render(result.observation, ids[-1] if ids else None)
    if len(ep.ids) + len(obs) >= max_tokens:  # no room left for the policy's next turn
        ep.truncated = True
        return False
    ep.ids += obs
    ep.action += [0] * len(obs)
    ep.logprobs += [0.0] * len(obs)
    ep.observation_tokens += len(obs)
    return True


def episode_rollout(
    prompts: list[list[int]], ids: list[list[int]], action: list[list[int]], logprobs: list[list[float]],
    truncated: list[bool], group_size: int, temperature: float, tokenizer,
) -> Rollout:  # fmt: skip
    """B episodes as one Rollout: `prompts` [B] prompt ids (left-padded), `ids` [B] episode ids (right-padded to the
    longest), `action` [B] 1 on sampled ids, `logprobs` [B] the sampler's (kept only on sampled ids). An empty list
    gives a 0-row Rollout (an evaluation shard with nothing to do still takes part in the rounds)."""
    pad = tokenizer.pad_token_id
    B, C = len(ids), max([len(x) for x in ids] + [1])
    if ids:
        prompt_ids, prompt_mask = left_pad(prompts, pad)
    else:
        prompt_ids, prompt_mask = torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.long)
    out_ids = torch.full((B, C), pad, dtype=torch.long)
    mask, act = torch.zeros(B, C, dtype=torch.long), torch.zeros(B, C, dtype=torch.long)
    out_logprobs = torch.zeros(B, C, dtype=torch.float32)
    for b, x in enumerate(ids):
        n = len(x)
        out_ids[b, :n] = torch.tensor(x, dtype=torch.long)
        mask[b, :n] = 1
        act[b, :n] = torch.tensor(action[b], dtype=torch.long)
        out_logprobs[b, :n] = torch.tensor(logprobs[b], dtype=torch.float32) * act[b, :n]
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=out_ids,
        completion_mask=mask,
        logprobs=out_logprobs,
        truncated=torch.tensor(truncated, dtype=torch.bool),
        texts=tokenizer.batch_decode(ids, skip_special_tokens=False),  # multi-turn: the turns stay visible
        group_size=group_size,
        temperature=temperature,
        action_mask=act,
    )


def _assemble(
    eps: list[_Episode], prompts: list[list[int]], G: int, temperature: float, tokenizer, calls: int, make_env
) -> Episodes:
    roll = episode_rollout(
        [p for p in prompts for _ in range(G)], [e.ids for e in eps], [e.action for e in eps],
        [e.logprobs for e in eps], [e.truncated for e in eps], G, temperature, tokenizer,
    )  # fmt: skip
    return Episodes(
        rollout=roll,
        final_texts=[e.last_text for e in eps],
        env_rewards=torch.tensor([e.reward for e in eps], dtype=torch.float32),
        stats=_episode_stats(eps, make_env),
        engine_calls=calls,
        envs=[e.env for e in eps],
    )


def _episode_stats(eps: list[_Episode], make_env: Callable[[], Environment]) -> dict[str, Tensor]:
    """{key: [B]}: turns and observation tokens per episode, and what each environment's metrics() reports (a key
    missing from an episode's metrics counts 0 there). With no episodes (an empty evaluation shard) the keys come
    from a fresh environment, so every rank reports the same keys."""
    per_env = [dict(getattr(e.env, "metrics", dict)() or {}) for e in eps]
    if not eps:
        probe = make_env()
        per_env = [dict(getattr(probe, "metrics", dict)() or {})]
        close_environments([probe])
    keys = sorted({k for m in per_env for k in m})
    stats = {
        "turns": torch.tensor([float(e.turns) for e in eps]),
        "observation_tokens": torch.tensor([float(e.observation_tokens) for e in eps]),
    }
    for k in keys:
        stats[k] = torch.tensor([float(m.get(k, 0.0)) for m in per_env] if eps else [])
    return stats


@dataclass
class EpisodeRunner:
    """What the trainer and the evaluation need to run a recipe's episodes: the environment factory, the episode
    limits, the weight of the environment's reward and the recipe's system prompt (part of each row's messages)."""

    make_env: Callable[[], Environment]
    tokenizer: object
    max_turns: int
    max_tokens: int
    reward_weight: float = 1.0
    system_prompt: str | None = None
    any_running: Callable[[bool], bool] | None = None

    def rows(self, prompts: PromptSet) -> list[dict]:
        """A PromptSet's rows as environments see them: the dataset columns, `prompt` (the prompt text) and
        `messages` (the chat messages the model would be prompted with)."""
        out = []
        for i, text in enumerate(prompts.texts):
            messages = prompts.prompt_messages[i]
            if messages is None:
                system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
                messages = [*system, {"role": "user", "content": text}]
            row = {k: v[i] for k, v in prompts.columns.items()}
            out.append({**row, "prompt": text, "messages": [dict(m) for m in messages]})
        return out

    def run(
        self,
        engine: Engine,
        prompts: PromptSet,
        group_size: int,
        sampling: SamplingParams,
        batch_size: int | None = None,
    ) -> Episodes:
        """`group_size` episodes for each prompt of the PromptSet `prompts`."""
        return run_episodes(
            engine, self.tokenizer, self.make_env, self.rows(prompts), group_size, sampling, self.max_turns,
            self.max_tokens, self.any_running, batch_size,
        )  # fmt: skip
