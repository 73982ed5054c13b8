"""Agent traces without a server: an episode's segments -> one sequence and its action mask, token by token; the
prompt ids of a request that sends the history back reuse the sampled ids (token in, token out)."""

import pytest

from rlhf.agents.tokens import CallHistory, PromptIds, RequestError, normalise, reply_text
from rlhf.agents.traces import Segment, chains, episode_trace, extends
from rlhf.data import encode_prompt


def seg(prompt, response, logprobs, version=0, finish="stop", text=""):
    return Segment(list(prompt), list(response), list(logprobs), version, finish, text)


def test_calls_that_extend_each_other_are_one_sequence():
    s1 = seg([1, 2, 3], [4, 5], [-0.1, -0.2], version=3, text="first")
    s2 = seg([1, 2, 3, 4, 5, 6, 7], [8, 9], [-0.3, -0.4], version=4, finish="length", text="second")
    t = episode_trace([s1, s2], [1, 2, 3], eos_id=0)
    assert t.prompt_ids == [1, 2, 3]
    assert t.response_ids == [4, 5, 6, 7, 8, 9]
    assert t.loss_mask == [1, 1, 0, 0, 1, 1]  # 6, 7: what the agent inserted between the calls
    assert t.response_logprobs == [-0.1, -0.2, 0.0, 0.0, -0.3, -0.4]
    assert (t.model_version, t.calls, t.inserted_tokens, t.truncated, t.final_text) == (3, 2, 2, True, "second")
    assert (t.untrained_calls, t.retemplated, t.texts) == (0, 0, ["first", "second"])


def test_a_retemplated_call_starts_a_chain_and_the_last_chain_is_the_sequence():
    s1 = seg([1, 2, 3], [4, 5], [-0.1, -0.2])
    s2 = seg([1, 2, 3, 4, 9, 6], [7], [-0.5])  # the agent rewrote the reply (5 -> 9): not an extension
    s3 = seg([1, 2, 3, 4, 9, 6, 7, 8], [10], [-0.7], text="last")
    assert not extends(s1, s2) and extends(s2, s3)
    assert chains([s1, s2, s3]) == [[0], [1, 2]]
    t = episode_trace([s1, s2, s3], [1, 2, 3], eos_id=0)
    assert (t.prompt_ids, t.response_ids, t.loss_mask) == ([1, 2, 3, 4, 9, 6], [7, 8, 10], [1, 0, 1])
    assert t.response_logprobs == [-0.5, 0.0, -0.7]
    assert (t.calls, t.untrained_calls, t.retemplated, t.final_text) == (2, 1, 1, "last")
    assert not extends(s3, seg([1, 2], [3], [0.0]))  # a shorter prompt never extends


def test_an_episode_without_calls_is_one_untrained_token():
    t = episode_trace([], [5, 6], eos_id=2)
    assert (t.prompt_ids, t.response_ids, t.loss_mask, t.response_logprobs) == ([5, 6], [2], [0], [0.0])


def test_chat_history_reuses_the_sampled_ids(tokenizer):
    p = PromptIds(tokenizer)
    msgs = normalise([{"role": "user", "content": [{"type": "text", "text": "Compute 4 * 5."}]}])
    first = p.chat(msgs, None, [])
    assert first == encode_prompt(tokenizer, [{"role": "user", "content": "Compute 4 * 5."}])
    # the policy wrote a tool call and stopped at its closing tag; the reply comes back without it, as OpenAI's does
    sampled = tokenizer("<multiply>4, 5</multiply>", add_special_tokens=False)["input_ids"]
    text, hit = reply_text(tokenizer, sampled, ("</multiply>",))
    assert (text, hit) == ("<multiply>4, 5", True)
    h = CallHistory([*msgs, {"role": "assistant", "content": text}], (), first + sampled, sampled[-1])
    # the agent sends the history back (its copy of the reply stripped differently) with the tool's result
    nxt = normalise([*msgs, {"role": "assistant", "content": text + "\n"}, {"role": "user", "content": "result: 20"}])
    ids = p.chat(nxt, None, [h])
    turn = "<|im_end|>\n<|im_start|>user\nresult: 20<|im_end|>\n<|im_start|>assistant\n"
    assert ids == first + sampled + tokenizer(turn, add_special_tokens=False)["input_ids"]
    assert p.fresh_chat(nxt) != ids  # encoded afresh, the closing tag the policy wrote would be gone
    # a reply the agent edited matches no call: the conversation is encoded afresh (a new chain)
    edited = normalise([*msgs, {"role": "assistant", "content": "<add>4, 5"}, {"role": "user", "content": "9"}])
    assert p.chat(edited, None, [h]) == p.fresh_chat(edited)


def test_completion_prompts_reuse_ids_and_take_token_ids(tokenizer):
    p = PromptIds(tokenizer)
    ids, text = p.completion("Q: 1+1?\nA:", [])
    assert (ids, text) == (tokenizer("Q: 1+1?\nA:")["input_ids"], "Q: 1+1?\nA:")
    sampled = tokenizer(" 2", add_special_tokens=False)["input_ids"]
    h = CallHistory(None, ("Q: 1+1?\nA: 2",), ids + sampled, sampled[-1])
    again, _ = p.completion("Q: 1+1?\nA: 2\nQ: 2+2?", [h])
    assert again == ids + sampled + tokenizer("\nQ: 2+2?", add_special_tokens=False)["input_ids"]
    assert p.completion([5, 6, 7], [h]) == ([5, 6, 7], None)
    with pytest.raises(RequestError, match="token ids must be in"):
        p.completion([10**9], [])
    with pytest.raises(RequestError, match="non-empty string"):
        p.completion("", [])
    with pytest.raises(RequestError, match="role"):
        normalise([{"content": "no role"}])
