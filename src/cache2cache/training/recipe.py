"""Train a fuser (C2C paper, Sec. 3.4): receiver and sharer frozen, next-token cross-entropy on the response
tokens, computed by the receiver decoding the response from the fused cache.

One step, in order: set lr and gate temperature -> evaluate/save when due -> for each micro-batch: prefill
sharer and receiver without gradients, fuse with gradients, run the receiver over the response, add the loss ->
(several processes: torch DistributedDataParallel sums the gradients once per step, under `torchrun` or
`accelerate launch`) -> clip -> AdamW step -> log.

Reproducibility: data order comes from (seed, epoch) and gate noise from (seed, step, global micro-batch), so
a resumed run and a data-parallel run (torchrun, any number of processes with the same global batch)
reproduce the single uninterrupted run's losses.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..alignment.layers import layer_map
from ..atomic import write_text
from ..caches.identity import identity_of
from ..errors import C2CError
from ..fuser.model import Fuser
from ..inference.factory import untrained_fuser
from ..inference.pipeline import C2CModel
from ..models.loading import load_model
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .dataset import load_training_data
from .distributed import all_reduce, join_process_group, my_micro_batches
from .examples import TrainBatch, TrainExample, collate
from .losses import LossSums, MicroBatchLoss
from .plots import read_metrics, write_run
from .schedule import lr_at, temperature_at

log = logging.getLogger(__name__)


class FuserTrainer:
    """A torchtune-style recipe: `setup()`, `train()`, `cleanup()`; nothing hidden."""

    def __init__(self, cfg: TrainConfig, resume: Path | None = None) -> None:
        self.cfg, self.resume = cfg.with_absolute_paths(), resume  # saved as such: resumable from anywhere
        self.out_dir = Path(cfg.out_dir).expanduser()
        self.world, self.rank, self.is_main = 1, 0, True  # until setup() joins a process group
        self.step = 0
        self.tokens_seen = 0
        self.elapsed = 0.0

    # ---- setup -------------------------------------------------------------------------------------------

    def setup(self) -> None:
        self._setup_distributed()
        ckpt = load_checkpoint(self.resume) if self.resume else None
        self._setup_model(ckpt)
        self._setup_data()
        self._setup_optimizer(ckpt)
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_text(self.out_dir / "train_config.json", self.cfg.to_json())
            if ckpt:
                self._truncate_metrics(self.step)

    def _setup_distributed(self) -> None:
        self.world, self.rank, self.device = join_process_group(self.cfg)
        self.is_main = self.rank == 0

    def _setup_model(self, ckpt: dict | None) -> None:
        cfg = self.cfg
        receiver = load_model(cfg.receiver, dtype=cfg.dtype, device=self.device)
        sharer = load_model(cfg.sharer, dtype=cfg.dtype, device=self.device, prefill_only=True)
        if ckpt:
            fuser = ckpt["fuser"].to(self.device)
            self.step = ckpt["trainer_state"]["step"]
            self.tokens_seen = ckpt["trainer_state"]["tokens_seen"]
            self.elapsed = ckpt["trainer_state"]["elapsed_s"]
        else:
            torch.manual_seed(cfg.seed)  # identical initial weights in every process
            alignment = cfg.layer_alignment
            if cfg.train_last_layers:
                n_r, n_s = receiver.model.config.num_hidden_layers, sharer.model.config.num_hidden_layers
                full = layer_map(alignment, n_r, n_s)
                alignment = ",".join(f"{r}:{s}" for r, s in enumerate(full)
                                     if s is not None and r >= n_r - cfg.train_last_layers)  # fmt: skip
            if cfg.init_fuser:  # start from a trained fuser (e.g. a chat-trained one) instead of random weights
                fuser = Fuser.from_pretrained(cfg.init_fuser, self.device)
            else:
                fuser = untrained_fuser(receiver, sharer, preset=cfg.preset, layer_alignment=alignment,
                                        token_alignment=cfg.token_alignment).to(self.device)  # fmt: skip
        # record which checkpoints it is trained with (a fuser loaded from an older config may not say)
        fuser.config.receiver_fingerprint = identity_of(receiver).fingerprint
        fuser.config.sharer_fingerprint = identity_of(sharer).fingerprint
        self.fuser = fuser.float().train()
        self.model = C2CModel(receiver, [sharer], [self.fuser])
        self.fuser.train()  # C2CModel puts fusers in eval mode for inference
        self.losses = MicroBatchLoss(self.model, cfg, self._autocast)
        if self.world > 1:  # the pipeline calls the wrapper, which sums gradients across processes in backward
            self.model.fusers[0] = DistributedDataParallel(self.fuser)

    def _setup_data(self) -> None:
        cfg = self.cfg
        self.data = load_training_data(cfg, self.model.aligners[0], self.is_main)
        self.val, self.train_set, self.data_reports = self.data.val, self.data.train, self.data.reports
        self.steps_per_epoch = len(self.train_set) // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise C2CError(f"{len(self.train_set)} training examples are fewer than one batch ({cfg.batch_size})")
        self.total_steps = cfg.max_steps or self.steps_per_epoch
        if self.is_main:
            log.info("%s", self.data.summary())

    def data_manifest(self) -> dict:
        """Exactly what this run trains on: each source, its weight and what happened to its records."""
        return self.data.manifest(self.cfg)

    def _setup_optimizer(self, ckpt: dict | None) -> None:
        separate_gates = self.cfg.gate_lr_mult != 1  # a group of their own only then: older checkpoints have two
        named = list(self.fuser.named_parameters())
        gates = [p for n, p in named if n.endswith("gate_logit")]
        decay = [p for _, p in named if p.dim() >= 2]
        no_decay = [p for n, p in named if p.dim() < 2 and not (separate_gates and n.endswith("gate_logit"))]
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay, "lr_mult": 1.0},
                  {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0}]  # norms, biases (and gates)
        if separate_gates:
            groups.append({"params": gates, "weight_decay": 0.0, "lr_mult": self.cfg.gate_lr_mult})
        self.optimizer = torch.optim.AdamW(groups, lr=self.cfg.lr, betas=(0.9, 0.95))
        if ckpt:
            try:
                self.optimizer.load_state_dict(ckpt["optimizer"])
            except ValueError:
                raise C2CError("the checkpoint's optimizer state does not fit this run (was gate_lr_mult changed "
                               "between 1 and another value on resume?)") from None

    # ---- data --------------------------------------------------------------------------------------------

    def _global_batch(self, step: int) -> list[TrainExample]:
        epoch, pos = divmod(step, self.steps_per_epoch)
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(self.train_set), generator=gen).tolist()
        start = pos * self.cfg.batch_size
        return [self.train_set[i] for i in order[start:start + self.cfg.batch_size]]

    # ---- the loss ----------------------------------------------------------------------------------------

    def _autocast(self):
        enabled = self.cfg.autocast_bf16 and (self.device.type == "cpu" or torch.cuda.is_bf16_supported())
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def loss_sum(self, tb: TrainBatch) -> LossSums:
        """Summed losses of a micro-batch (gradients reach the fuser only)."""
        return self.losses(tb)

    def _sync_gradients(self, last: bool):
        """Gradient accumulation: DDP communicates once per step, in the backward of the last micro-batch."""
        return contextlib.nullcontext() if last or self.world == 1 else self.model.fusers[0].no_sync()

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Validation cross-entropy per trained token and, where the held-out set has multiple-choice examples,
        how often the receiver ranks the gold option first (gates hard, as at inference)."""
        self.fuser.eval()
        total = torch.zeros(7, dtype=torch.float64, device=self.device)
        mine = self.val[self.rank::self.world]
        for i in range(0, len(mine), self.cfg.micro_batch_size):
            tb = collate(self.model, mine[i:i + self.cfg.micro_batch_size])
            sums = self.loss_sum(tb)
            total += torch.tensor([sums.ce.item(), tb.num_targets, sums.correct, len(tb.groups),
                                   sums.mismatch_correct, sums.logged()[-1], tb.response_mask.sum().item()],
                                  dtype=torch.float64, device=self.device)  # fmt: skip
        all_reduce(total, self.world)
        self.fuser.train()
        out = {"val_loss": float(total[0] / total[1])}
        if self.cfg.sharer_kl_weight:  # per continuation token: how far the fused receiver is from the sharer
            out["val_sharer_kl"] = float(total[5] / total[6])
        if total[3]:
            out["val_option_acc"] = float(total[2] / total[3])
            if self.cfg.mismatch_loss_weight:  # the same questions fused with another question's sharer cache
                out["val_option_acc_mismatched"] = float(total[4] / total[3])
        return out

    # ---- the loop ----------------------------------------------------------------------------------------

    def train(self) -> dict:
        cfg = self.cfg
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.is_main, desc="train", unit="step",
                   dynamic_ncols=True)  # fmt: skip
        while self.step < self.total_steps:
            t0 = time.perf_counter()
            lr, temp = lr_at(cfg, self.step, self.total_steps), temperature_at(cfg, self.step, self.total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_mult", 1.0)
            self.fuser.set_temperature(temp)
            if self.step % cfg.eval_every == 0:
                self._log({"kind": "val", "step": self.step, **self.evaluate()})
            batch = self._global_batch(self.step)
            n_targets = sum(len(e.response_ids) for e in batch)  # known to every process: no communication
            n_groups = sum(bool(e.option_ids) for e in batch)
            n_tokens = n_targets + sum(len(e.prompt.receiver_ids) for e in batch)
            n_continued = sum(e.continuation_tokens for e in batch)  # where the sharer's distribution is a target
            # ce, ranking, ranked right, mismatch term, ranked right with another question's sharer cache, sharer KL
            loss_total = torch.zeros(6, dtype=torch.float64, device=self.device)
            micro = my_micro_batches(batch, self.cfg.micro_batch_size, self.world, self.rank)
            for j, (global_micro, examples) in enumerate(micro):
                torch.manual_seed(cfg.seed * 1_000_003 + self.step * 1009 + global_micro)  # gate noise
                with self._sync_gradients(last=j == len(micro) - 1):
                    sums = self.loss_sum(collate(self.model, examples))
                    loss = sums.objective(cfg, n_targets, n_groups, n_continued)
                    # each process divides by the global counts and DDP averages over processes: scale back up
                    (loss * self.world).backward()
                loss_total += torch.tensor(sums.logged(), dtype=torch.float64, device=self.device)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.fuser.parameters(), cfg.grad_clip)
            if not math.isfinite(float(grad_norm)):  # before the step: the weights stay as they were
                raise C2CError(f"step {self.step + 1}: the gradient is not finite (loss {loss_total.tolist()}); "
                               f"stopped, the last good checkpoint in {self.out_dir} is kept (lower lr or check "
                               "the data)")  # fmt: skip
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            ce_sum, rank_sum, right, mm_sum, mm_right, kl_sum = all_reduce(loss_total, self.world).tolist()
            train_loss = ce_sum / n_targets
            if not (math.isfinite(train_loss) and math.isfinite(rank_sum)):
                raise C2CError(f"step {self.step + 1}: the loss is not finite ({train_loss}); stopped, the last good "
                               f"checkpoint in {self.out_dir} is kept (lower lr or check the data)")  # fmt: skip
            self.step += 1
            dt = time.perf_counter() - t0
            self.elapsed += dt
            self.tokens_seen += n_tokens
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                g = max(1, n_groups)  # no question groups: the option terms are not logged
                options = {"option_loss": rank_sum / g, "option_acc": right / g} if n_groups else {}
                if n_groups and cfg.mismatch_loss_weight:
                    options.update(mismatch_loss=mm_sum / n_groups, mismatch_acc=mm_right / n_groups)
                if cfg.sharer_kl_weight:
                    options["sharer_kl"] = kl_sum / n_continued
                self._log({"kind": "train", "step": self.step, "loss": train_loss, **options, "lr": lr,
                           "temperature": temp, "grad_norm": float(grad_norm), "tokens_per_s": n_tokens / dt,
                           "tokens_seen": self.tokens_seen, "elapsed_s": self.elapsed})  # fmt: skip
            bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{n_tokens / dt:.0f}", T=f"{temp:.2f}")
            bar.update(1)
            if self.step % cfg.save_every == 0 or self.step == self.total_steps:
                self.save_checkpoint()
        bar.close()
        val = self.evaluate()
        self._log({"kind": "val", "step": self.step, **val})
        return self._finish(val)

    # ---- outputs -----------------------------------------------------------------------------------------

    def _log(self, record: dict) -> None:
        if self.is_main:
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def _truncate_metrics(self, step: int) -> None:
        """On resume, drop log lines written after the checkpoint by the interrupted run."""
        path = self.out_dir / "metrics.jsonl"
        kept = [m for m in read_metrics(path) if m["step"] < step or (m["step"] == step and m["kind"] == "train")]
        write_text(path, "".join(json.dumps(m) + "\n" for m in kept))

    def save_checkpoint(self) -> None:
        if not self.is_main:
            return
        state = {"step": self.step, "epoch": self.step // self.steps_per_epoch,
                 "position": self.step % self.steps_per_epoch, "tokens_seen": self.tokens_seen,
                 "elapsed_s": self.elapsed}  # fmt: skip
        save_checkpoint(self.out_dir, self.fuser, self.optimizer, state, self.cfg.to_json(), self.cfg.keep_last)

    def _finish(self, val: dict) -> dict:
        summary = {"steps": self.step, "tokens_seen": self.tokens_seen, "elapsed_s": round(self.elapsed, 1),
                   "tokens_per_s": round(self.tokens_seen / max(self.elapsed, 1e-9), 1), **val,
                   "data": "; ".join(r.summary() for r in self.data_reports), "train_examples": len(self.train_set),
                   "fuser_parameters": self.fuser.num_parameters(), "processes": self.world,
                   "fuser_dir": str(self.out_dir / "fuser")}  # fmt: skip
        if self.is_main:
            self.fuser.eval()
            write_run(self.out_dir, self.fuser, f"{self.cfg.receiver} <- {self.cfg.sharer}", summary,
                      self.data_manifest())  # fmt: skip
        return summary

    def cleanup(self) -> None:
        """Drop the DDP wrapper *before* the process group. The other order leaves the wrapper's reducer holding the
        last reference to the gloo group, whose destructor then joins a worker thread that waits for the GIL the
        destructor holds: the process hangs at exit (seen in 3 of 6 two-process runs; pytorch/pytorch#56297)."""
        if hasattr(self, "model") and isinstance(self.model.fusers[0], DistributedDataParallel):
            self.model.fusers[0] = self.fuser
            gc.collect()
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
