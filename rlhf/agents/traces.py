"""Trace segments of agent episodes, and the trainable sequence the trainer builds from an episode's segments.

Every call an agent makes to the endpoint is recorded as a `Segment`: the prompt token ids the policy read, the token
ids it sampled, their behaviour log-probs, the policy version and the finish reason. An episode is the list of
segments one agent run made, in call order.

Segment k+1 *extends* segment k when its prompt ids start with segment k's prompt + response ids (token in, token
out: the server keeps the sampled ids when the agent sends the history back, `rlhf.agents.tokens`). A run of
segments that extend each other is a *chain*: one sequence whose ids are the first prompt, then each response
(action mask 1) and what the agent or its tools inserted between two calls (action mask 0). When a call does not
extend the previous one (the agent re-templated or edited the history) a new chain begins and the break is counted.

An episode trains as ONE row of the rollout, its last chain (the one that holds the agent's final reply, which the
rewards judge): a GRPO group stays the G agent runs of one prompt, and a step keeps prompts x G rows, the count its
gradient-accumulation windows were sized for. Calls of earlier chains are counted (`agent/untrained_calls`) and not
trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Segment:
    """One endpoint call."""

    prompt_ids: list[int]  # [P] what the policy read
    response_ids: list[int]  # [R] what it sampled (cut to the call's max_tokens; the stop string or EOS kept)
    logprobs: list[float]  # [R] behaviour log-probs of response_ids at the run's temperature
    version: int  # the policy version (training draws completed before the call's draw)
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    text: str = ""  # the reply as returned to the agent (special tokens and the stop string removed)

    @property
    def ids(self) -> list[int]:
        """[P + R] the prompt followed by the response."""
        return self.prompt_ids + self.response_ids


def extends(previous: Segment, nxt: Segment) -> bool:
    """Whether `nxt`'s prompt ids start with `previous`'s prompt + response ids."""
    head = previous.ids
    return len(nxt.prompt_ids) >= len(head) and nxt.prompt_ids[: len(head)] == head


def chains(segments: list[Segment]) -> list[list[int]]:
    """The segments' indices cut where a call does not extend the one before (each list one chain, in order)."""
    out: list[list[int]] = []
    for i, seg in enumerate(segments):
        if out and extends(segments[i - 1], seg):
            out[-1].append(i)
        else:
            out.append([i])
    return out


@dataclass
class Trace:
    """One trainable sequence of an episode: the trace contract `(prompt_ids, response_ids, loss_mask,
    response_logprobs, model_version, reward)` of proxy-based agent trainers."""

    prompt_ids: list[int]  # [P] the chain's first prompt
    response_ids: list[int]  # [C] everything after it: sampled and inserted tokens, in order
    loss_mask: list[int]  # [C] 1 on sampled tokens, 0 on inserted ones (all 0 for a failed episode)
    response_logprobs: list[float]  # [C] behaviour log-probs of sampled tokens, 0 on inserted ones
    model_version: int  # the oldest policy version among its calls
    reward: float | None = None  # what the agent returned (None: nothing; the reward functions still score)
    calls: int = 0  # calls in this sequence
    inserted_tokens: int = 0  # tokens the agent or its tools inserted between calls
    truncated: bool = False  # the last call stopped at its token limit
    final_text: str = ""  # the last call's reply: what the recipe's reward functions score
    failure: str | None = None  # why the episode failed (None: it did not)
    failure_kind: str | None = None  # timeouts, errors, bad_reward or no_calls
    refused_calls: int = 0  # calls the endpoint refused (over agent.max_calls or agent.max_tokens)
    untrained_calls: int = 0  # calls of earlier chains (not in this sequence)
    retemplated: int = 0  # calls that did not extend the call before them
    texts: list[str] = field(default_factory=list)  # every call's reply, in order


def episode_trace(segments: list[Segment], first_prompt: list[int], eos_id: int) -> Trace:
    """The episode's last chain as one sequence. Without segments (the agent made no call) the sequence is the
    row's prompt followed by one EOS token that does not train."""
    if not segments:
        return Trace(list(first_prompt), [eos_id], [0], [0.0], model_version=-1, final_text="")
    cut = chains(segments)
    last = [segments[i] for i in cut[-1]]
    ids, mask, logps = [], [], []
    inserted = 0
    for k, seg in enumerate(last):
        if k:  # what the agent sent between the previous reply and this call
            gap = seg.prompt_ids[len(last[k - 1].ids) :]
            ids += gap
            mask += [0] * len(gap)
            logps += [0.0] * len(gap)
            inserted += len(gap)
        ids += seg.response_ids
        mask += [1] * len(seg.response_ids)
        logps += list(seg.logprobs)
    if not ids:  # calls that sampled nothing (max_tokens 0 is refused, so only an immediate stop): keep a column
        ids, mask, logps = [eos_id], [0], [0.0]
    return Trace(
        prompt_ids=list(last[0].prompt_ids),
        response_ids=ids,
        loss_mask=mask,
        response_logprobs=logps,
        model_version=min(s.version for s in last),
        calls=len(last),
        inserted_tokens=inserted,
        truncated=last[-1].finish_reason == "length",
        final_text=last[-1].text,
        untrained_calls=len(segments) - len(last),
        retemplated=len(cut) - 1,
        texts=[s.text for s in segments],
    )
