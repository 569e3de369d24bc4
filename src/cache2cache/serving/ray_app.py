"""Cache-to-cache on Ray Serve, beyond one machine: the sharer and the receiver are separate deployments (their own
replicas and resources), the sharer's cache travels between them as a Ray object reference, and an ingress
deployment exposes the same OpenAI routes as `c2c serve` (non-streaming).

    SharerDeployment    the sharer with its weights: prefills a conversation, returns the cache as a cache file
                        (safetensors bytes, 16-bit by default) -- or answers alone
    ReceiverDeployment  the receiver, the fuser, and the sharer as a skeleton (tokenizer + config, no weights):
                        answers from its own cache with the received sharer cache fused in
    OpenAIIngress       /v1/chat/completions, /v1/completions, /v1/models, /health

For a c2c request the ingress calls `sharer.prefill` and passes the *response* (not its bytes) to
`receiver.answer`: Ray resolves it inside the receiver replica, so the cache goes from the sharer's node to the
receiver's through Ray's object store, never through the ingress. Caches cross as safetensors bytes, the
project's file format, not as pickled tensors.

Run it (a local Ray, or a cluster: `ray start --head` on one node, `ray start --address HEAD:6379` on others):

    serve run cache2cache.serving.ray_app:build receiver=SmolLM2-135M-Instruct \\
        sharer=Qwen2.5-Coder-1.5B-Instruct fuser=PATH sharer_cpus=2 receiver_cpus=1 [sharer_gpus=1 ...]
"""


from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from ..caches.identity import identity_of
from ..caches.prompt_cache import PromptCache
from ..caches.signing import CacheKeys, validate
from ..caches.store import PrefixStore
from ..errors import C2CError
from ..fuser.model import Fuser
from ..inference.answerers import answerer
from ..inference.batching import GenerateOptions, to_messages
from ..inference.pipeline import C2CModel
from ..models.loading import load_model, load_skeleton
from .schemas import ApiError, ChatRequest, CompletionRequest, Usage, completion_body, error_body, new_id, now
from .transfer import claims_cache


def _options(d: dict) -> GenerateOptions:
    return GenerateOptions(**d)


def _answer(model: C2CModel, mode: str, prompt, options: dict) -> dict:
    out = answerer(model, mode).generate([prompt], _options(options)).results[0]
    finish = "length" if out.new_tokens >= options["max_new_tokens"] else "stop"
    return {"text": out.text, "prompt_tokens": out.prompt_tokens, "completion_tokens": out.new_tokens,
            "finish_reason": finish}  # fmt: skip


@serve.deployment
class SharerDeployment:
    def __init__(self, spec: str, device: str = "cpu", wire_dtype: str | None = "bfloat16",
                 key_file: str | None = None) -> None:  # fmt: skip
        self.model = C2CModel(load_model(spec, device=device, prefill_only=True), store=PrefixStore())
        self.wire_dtype = wire_dtype
        self.keys = _keys(key_file)

    def prefill(self, prompt) -> bytes:
        """This sharer's cache of the conversation, as a cache file (what the receiver deployment reads)."""
        import torch

        from ..alignment.tokens import encode, render

        sharer, messages = self.model.receiver, to_messages(prompt)
        ids = encode(sharer.tokenizer, render(sharer.tokenizer, messages))[0]
        cache = self.model.store.prefill(sharer, ids, messages)
        return cache.to_bytes(getattr(torch, self.wire_dtype) if self.wire_dtype else None, self.keys)

    def answer(self, prompt, options: dict) -> dict:
        return _answer(self.model, "receiver", prompt, options)


@serve.deployment
class ReceiverDeployment:
    def __init__(self, receiver: str, sharer: str, fuser: str, device: str = "cpu", key_file: str | None = None,
                 allow_unsigned: bool = False) -> None:  # fmt: skip
        r = load_model(receiver, device=device)
        self.sharer = load_skeleton(sharer, kv_device=device)
        self.model = C2CModel(r, [self.sharer], [Fuser.from_pretrained(fuser, device)], store=PrefixStore())
        self.keys = _keys(key_file)
        if self.keys is None and not allow_unsigned:
            raise C2CError("the receiver deployment reads caches from the sharer's: give cache_key_file=PATH "
                           "(or allow_unsigned_caches=true on a trusted cluster)")  # fmt: skip

    def answer(self, mode: str, prompt, options: dict, cache: bytes | None = None) -> dict:
        if cache is not None:
            received = PromptCache.from_bytes(cache, key=self.keys)
            if not claims_cache(self.sharer, received):
                raise C2CError(f"received a cache of {received.identity.name}, not of {self.sharer.name}")
            validate(received, identity_of(self.sharer), None, self.sharer.tokenizer)
            self.model.store.put(received.to(self.sharer.device, self.sharer.model.dtype))
        return _answer(self.model, mode, prompt, options)


def _keys(key_file: str | None) -> CacheKeys | None:
    """The cache keys of a replica: from the file (read where the replica runs), else $C2C_CACHE_KEY."""
    return CacheKeys.from_file(key_file) if key_file else CacheKeys.from_env()


api = FastAPI(title="cache2cache on Ray Serve", docs_url=None, redoc_url=None)


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, e: RequestValidationError):
    first = e.errors()[0] if e.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    return JSONResponse(error_body(f"{where + ': ' if where else ''}{first.get('msg', 'invalid request')}",
                                   param=where), status_code=400)  # fmt: skip


@api.exception_handler(ApiError)
async def _api_error(request: Request, e: ApiError):
    return JSONResponse(error_body(e.message, e.kind, e.param, e.code), status_code=e.status)


@serve.deployment
@serve.ingress(api)
class OpenAIIngress:
    def __init__(self, sharer: DeploymentHandle, receiver: DeploymentHandle, names: dict, max_tokens: int = 512):
        self.sharer, self.receiver, self.names, self.max_tokens = sharer, receiver, names, max_tokens

    def _ids(self) -> list[str]:
        return [self.names["receiver"], "receiver", self.names["sharer"], "c2c", f"c2c/{self.names['sharer']}"]

    @api.get("/health")
    async def health(self) -> dict:
        return {"status": "ok", "models": self._ids()}

    @api.get("/v1/models")
    async def models(self) -> dict:
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "cache2cache"}
                                           for m in self._ids()]}  # fmt: skip

    async def _run(self, req, prompt, kind: str) -> dict:
        if req.stream:
            raise ApiError(400, "streaming is served by `c2c serve`; the Ray Serve app answers whole completions",
                           param="stream")  # fmt: skip
        n = req.new_tokens or min(128, self.max_tokens)
        if n > self.max_tokens:
            raise ApiError(400, f"max_tokens {n} exceeds this server's limit of {self.max_tokens}", param="max_tokens")
        sample = req.temperature > 0
        options = {"max_new_tokens": n, "do_sample": sample, "temperature": req.temperature if sample else 1.0,
                   "top_p": req.top_p, "seed": req.seed}  # fmt: skip
        try:
            if req.model in (self.names["receiver"], "receiver"):
                out = await self.receiver.answer.remote("receiver", prompt, options)
            elif req.model == self.names["sharer"]:
                out = await self.sharer.answer.remote(prompt, options)
            elif req.model in ("c2c", f"c2c/{self.names['sharer']}"):
                cache = self.sharer.prefill.remote(prompt)  # a reference: resolved in the receiver's replica
                out = await self.receiver.answer.remote("c2c", prompt, options, cache)
            else:
                raise ApiError(404, f"model {req.model!r} is not served here; GET /v1/models lists them",
                               param="model", code="model_not_found")  # fmt: skip
        except ApiError:
            raise
        except Exception as e:  # a C2CError raised in a replica arrives wrapped by Ray: report its message
            message = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise ApiError(400 if "C2CError" in str(e) else 500, message) from None
        usage = Usage(prompt_tokens=out["prompt_tokens"], completion_tokens=out["completion_tokens"],
                      total_tokens=out["prompt_tokens"] + out["completion_tokens"])  # fmt: skip
        return completion_body(kind, new_id("chatcmpl" if kind == "chat" else "cmpl"), now(), req.model, out["text"],
                               out["finish_reason"], usage)  # fmt: skip

    @api.post("/v1/chat/completions")
    async def chat(self, req: ChatRequest) -> dict:
        return await self._run(req, [m.model_dump() for m in req.messages], "chat")

    @api.post("/v1/completions")
    async def completions(self, req: CompletionRequest) -> dict:
        return await self._run(req, req.prompt, "completion")


def build(args: dict):
    """The application `serve run cache2cache.serving.ray_app:build key=value ...` deploys. Keys: receiver, sharer,
    fuser (required); device, sharer_cpus, receiver_cpus, sharer_gpus, receiver_gpus, sharer_replicas,
    receiver_replicas, wire_dtype (bfloat16, or none for the sharer's own dtype), max_tokens, cache_key_file (a
    path readable on every node: the sharer signs its caches, the receiver verifies them; else $C2C_CACHE_KEY in
    the replicas' environment), allow_unsigned_caches (true: a trusted cluster without a key)."""
    missing = [k for k in ("receiver", "sharer", "fuser") if not args.get(k)]
    if missing:
        raise C2CError(f"the Ray Serve app needs {', '.join(missing)}=... (see cache2cache.serving.ray_app)")
    device = args.get("device", "cpu")

    def resources(role: str) -> dict:
        return {"num_replicas": int(args.get(f"{role}_replicas", 1)),
                "ray_actor_options": {"num_cpus": float(args.get(f"{role}_cpus", 1)),
                                      "num_gpus": float(args.get(f"{role}_gpus", 0))}}  # fmt: skip

    wire = args.get("wire_dtype", "bfloat16")
    key_file = args.get("cache_key_file")
    unsigned = str(args.get("allow_unsigned_caches", "false")).lower() in ("1", "true", "yes")
    sharer = SharerDeployment.options(**resources("sharer")).bind(args["sharer"], device,
                                                                   None if wire in (None, "none") else wire, key_file)
    receiver = ReceiverDeployment.options(**resources("receiver")).bind(args["receiver"], args["sharer"],
                                                                         args["fuser"], device, key_file, unsigned)
    names = {"receiver": load_skeleton(args["receiver"]).name, "sharer": load_skeleton(args["sharer"]).name}
    return OpenAIIngress.options(ray_actor_options={"num_cpus": 0}).bind(sharer, receiver, names,
                                                                         int(args.get("max_tokens", 512)))
