"""Request bodies of `/v1/generate` and `/v1/score`, validated into typed requests.

Every problem raises `RequestError` with the HTTP status, the offending field
and a message that says how to fix it; the HTTP front turns it into a JSON body.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Optional

from spot.serve.engine import Decoding

METHODS = {"greedy": "greedy", "beam": "beam", "sample": "sample", "temperature": "sample"}
DECODING_FIELDS = ("method", "max_length", "num_decodes", "alpha", "temperature", "topk",
                   "topp", "seed")


class RequestError(ValueError):
  """A request the server refuses: HTTP `status`, the `field` at fault, and extra body keys."""

  def __init__(self, status: int, kind: str, field: Optional[str], message: str,
               **extra: Any):
    super().__init__(message)
    self.status = status
    self.kind = kind
    self.field = field
    self.extra = extra
    self.headers: dict[str, str] = {}

  def body(self) -> dict:
    return {"error": {"status": self.status, "kind": self.kind, "field": self.field,
                      "message": str(self), **self.extra}}


def bad(field: str, message: str) -> RequestError:
  return RequestError(400, "bad_request", field, message)


@dataclasses.dataclass(frozen=True)
class GenerateRequest:
  prompt: str
  inputs: tuple[str, ...]
  single: bool  # "inputs" was one string: answer with one output
  decoding: Decoding
  truncate: bool


@dataclasses.dataclass(frozen=True)
class ScoreRequest:
  prompt: str
  inputs: tuple[str, ...]
  single: bool
  targets: tuple[str, ...]
  truncate: bool


def parse_json(raw: bytes) -> dict:
  """The request body as a JSON object (400 when it is not one)."""
  try:
    body = json.loads(raw.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise bad("body", f"the request body is not valid JSON ({e}); send a JSON object such as "
                      '{"prompt": "NAME", "inputs": ["text"]} with Content-Type: '
                      "application/json.") from None
  if not isinstance(body, dict):
    raise bad("body", f"the request body is a JSON {type(body).__name__}; send a JSON object "
                      'such as {"prompt": "NAME", "inputs": ["text"]}.')
  return body


def _unknown_fields(body: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
  extra = sorted(set(body) - set(allowed))
  if extra:
    raise bad(f"{where}{extra[0]}", f"unknown field {where}{extra[0]!r}; the allowed fields "
                                    f"are {', '.join(allowed)}.")


def _prompt(body: Mapping[str, Any]) -> str:
  name = body.get("prompt")
  if not isinstance(name, str) or not name:
    raise bad("prompt", 'give "prompt": the name of a library entry (GET /v1/prompts lists '
                        "them).")
  return name


def _texts(body: Mapping[str, Any], field: str, max_items: int) -> tuple[tuple[str, ...], bool]:
  value = body.get(field)
  single = isinstance(value, str)
  items = [value] if single else value
  if not isinstance(items, list) or not items or not all(isinstance(x, str) for x in items):
    raise bad(field, f'give "{field}" as a string or a non-empty list of strings.')
  if len(items) > max_items:
    raise RequestError(413, "too_many", field, f'"{field}" has {len(items)} items; send at most '
                                               f"{max_items} per request (split the list).")
  return tuple(items), single


def _truncate(body: Mapping[str, Any]) -> bool:
  value = body.get("truncate", False)
  if not isinstance(value, bool):
    raise bad("truncate", '"truncate" must be true or false.')
  return value


def _number(d: Mapping[str, Any], name: str, kind: type, default: Any, low: float,
            high: Optional[float] = None, low_open: bool = False) -> Any:
  value = d.get(name, default)
  ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  if kind is int:
    ok = ok and float(value).is_integer()
  if ok:
    value = kind(value)
    ok = (value > low if low_open else value >= low) and (high is None or value <= high)
  if not ok:
    bound = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
    raise bad(f"decoding.{name}", f'"decoding.{name}" must be {"an integer" if kind is int else "a number"} '
                                  f"{bound}; got {d.get(name)!r}.")
  return value


def parse_decoding(value: Any, default: Decoding, max_length: int) -> Decoding:
  """The request's "decoding" over the server's default (greedy, its max length)."""
  if value is None:
    return default
  if not isinstance(value, dict):
    raise bad("decoding", '"decoding" must be an object such as {"method": "greedy", '
                          '"max_length": 16}.')
  _unknown_fields(value, DECODING_FIELDS, "decoding.")
  method = value.get("method", "greedy")
  if method not in METHODS:
    raise bad("decoding.method", f'"decoding.method" is {method!r}; use one of '
                                 f"{', '.join(METHODS)}.")
  method = METHODS[method]
  out = Decoding(method=method, max_length=_number(value, "max_length", int,
                                                   default.max_length, 1, max_length))
  if method == "beam":
    out = dataclasses.replace(out, num_decodes=_number(value, "num_decodes", int, 4, 1, 64),
                              alpha=_number(value, "alpha", float, 0.6, 0.0))
  elif method == "sample":
    topk = _number(value, "topk", int, 0, 0)
    topp = _number(value, "topp", float, 0.0, 0.0, 1.0)
    if topk and topp:
      raise bad("decoding.topp", 'give at most one of "decoding.topk" and "decoding.topp".')
    out = dataclasses.replace(
        out, num_decodes=_number(value, "num_decodes", int, 1, 1, 64),
        temperature=_number(value, "temperature", float, 1.0, 0.0, low_open=True),
        topk=topk, topp=topp, seed=_number(value, "seed", int, 0, 0, 2**31 - 1))
  return out


def parse_generate(body: Mapping[str, Any], default: Decoding, max_length: int,
                   max_items: int) -> GenerateRequest:
  _unknown_fields(body, ("prompt", "inputs", "decoding", "truncate"), "")
  inputs, single = _texts(body, "inputs", max_items)
  return GenerateRequest(_prompt(body), inputs, single,
                         parse_decoding(body.get("decoding"), default, max_length),
                         _truncate(body))


def parse_score(body: Mapping[str, Any], max_items: int) -> ScoreRequest:
  _unknown_fields(body, ("prompt", "inputs", "targets", "truncate"), "")
  inputs, single = _texts(body, "inputs", max_items)
  targets, _ = _texts(body, "targets", max_items)
  if len(inputs) * len(targets) > max_items:
    raise RequestError(413, "too_many", "targets",
                       f"{len(inputs)} inputs x {len(targets)} targets = "
                       f"{len(inputs) * len(targets)} scores; send at most {max_items} per "
                       "request (fewer inputs per request).")
  return ScoreRequest(_prompt(body), inputs, single, targets, _truncate(body))
