"""Mid-stream failover for vLLM replicas: what a stream has said so far, in tokens, and the request
that makes another replica carry on from exactly there.

vLLM returns the prompt's token ids and each chunk's output token ids when asked
(`return_token_ids`). When the replica dies or stalls, the rest is asked of another one through
/v1/completions with a token-id prompt: the original prompt's ids (chat template already applied)
followed by every token already sent, the same sampling settings, and what is left of max_tokens.
Its chunks are turned back into the client's shape (chat chunks, with the first stream's id), and
the closing usage counts the original prompt and every token sent, once.

Not continued (an explicit error instead): several choices (n > 1), a tool call already begun
(its arguments would be re-parsed mid-JSON), or a stream that never said its prompt's ids.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The request fields that shape sampling: carried over to the continuation as they were.
SAMPLING = ("temperature", "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids", "presence_penalty",
            "frequency_penalty", "repetition_penalty", "logit_bias", "ignore_eos", "skip_special_tokens",
            "spaces_between_special_tokens", "include_stop_str_in_output", "bad_words", "allowed_token_ids")


@dataclass
class Progress:
    """One streamed answer (one choice) as it goes: enough to continue it elsewhere."""
    chat: bool                                  # chat chunks to the client, else text-completion chunks
    prompt_ids: list[int] | None = None
    output_ids: list[int] = field(default_factory=list)
    id: str = ""
    created: int = 0
    model: str = ""
    finished: bool = False
    blocker: str = ""                           # why it cannot be continued, once known
    continued: int = 0                          # replicas it moved to

    def see(self, chunk: dict[str, Any]) -> None:
        """Note one chunk of the first replica's stream (before it goes to the client). Once per
        streamed token: kept to plain lookups."""
        if not self.id:
            self.id, self.created, self.model = chunk.get("id", ""), chunk.get("created", 0), chunk.get("model", "")
        if self.prompt_ids is None and chunk.get("prompt_token_ids") is not None:
            self.prompt_ids = list(chunk["prompt_token_ids"])
        choices = chunk.get("choices")
        if not choices:
            return
        if len(choices) > 1:
            self.blocker = "several choices (n > 1) cannot be continued"
        for choice in choices:
            if choice.get("index"):
                self.blocker = "several choices (n > 1) cannot be continued"
            if self.prompt_ids is None and choice.get("prompt_token_ids") is not None:
                self.prompt_ids = list(choice["prompt_token_ids"])     # completions put them on the choice
            ids = choice.get("token_ids")
            if ids:
                self.output_ids.extend(ids)
            delta = choice.get("delta")
            if delta and delta.get("tool_calls"):
                self.blocker = "a tool call was half sent"
            if choice.get("finish_reason"):
                self.finished = True

    def why_not(self) -> str:
        """'' when the stream can be continued on another replica, else the reason it cannot."""
        if self.blocker:
            return self.blocker
        if self.prompt_ids is None:
            return "the replica never sent the prompt's token ids"
        return ""

    def continuation(self, req: dict[str, Any], model: str) -> dict[str, Any]:
        """The /v1/completions request for the rest of the answer."""
        assert self.prompt_ids is not None
        body: dict[str, Any] = {k: req[k] for k in SAMPLING if req.get(k) is not None}
        body.update(model=model, prompt=self.prompt_ids + self.output_ids, stream=True, return_token_ids=True,
                    stream_options={"include_usage": True})
        limit = req.get("max_completion_tokens") or req.get("max_tokens")
        if limit is not None:
            body["max_tokens"] = max(1, int(limit) - len(self.output_ids))
        if req.get("min_tokens"):
            body["min_tokens"] = max(0, int(req["min_tokens"]) - len(self.output_ids))
        return body

    def usage(self, continuation_usage: dict[str, Any] | None, tokens_before: int) -> dict[str, Any]:
        """The closing usage: the original prompt, and every output token, each counted once."""
        prompt = len(self.prompt_ids or ())
        completion = len(self.output_ids)
        if continuation_usage and continuation_usage.get("completion_tokens") is not None:
            completion = tokens_before + int(continuation_usage["completion_tokens"])
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def outward(self, chunk: dict[str, Any], continued_from: int, want_ids: bool) -> dict[str, Any]:
        """A continuation's text-completion chunk in the client's shape, under the first stream's id."""
        out: dict[str, Any] = {"id": self.id or chunk.get("id", ""), "created": self.created or chunk.get("created", 0),
                               "model": self.model or chunk.get("model", "")}
        choices = []
        for choice in chunk.get("choices") or ():
            self.output_ids.extend(choice.get("token_ids") or ())
            if choice.get("finish_reason"):
                self.finished = True
            if self.chat:
                shaped = {"index": 0, "delta": {"content": choice.get("text", "")}, "logprobs": None,
                          "finish_reason": choice.get("finish_reason")}
            else:
                shaped = {"index": 0, "text": choice.get("text", ""), "logprobs": None,
                          "finish_reason": choice.get("finish_reason")}
            if want_ids and choice.get("token_ids") is not None:
                shaped["token_ids"] = choice["token_ids"]
            choices.append(shaped)
        out["object"] = "chat.completion.chunk" if self.chat else "text_completion"
        out["choices"] = choices
        if chunk.get("usage"):
            out["usage"] = self.usage(chunk["usage"], continued_from)
        return out


def strip_ids(chunk: dict[str, Any]) -> dict[str, Any]:
    """A first-replica chunk without the token ids the gateway asked for (the client did not). In
    place: the chunk was parsed for this stream alone, and a copy per token is CPU the replica's
    engine could use."""
    chunk.pop("prompt_token_ids", None)
    for choice in chunk.get("choices") or ():
        choice.pop("token_ids", None)
        choice.pop("prompt_token_ids", None)
    return chunk
