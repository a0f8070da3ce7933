"""The training loop: a generator that yields progress and returns the trained model.

``iter_train`` is what the CLI and the napari Train widget both drive. It yields a small
:class:`TrainUpdate` after every step (with validation numbers after each validation and, if
asked, a preview probability map), checks a stop request between steps, and returns a
:class:`TrainResult` holding the mean of the weights of the run's second half (or, when it
stops before that, the best validated weights).
"""

from __future__ import annotations

import copy
import math
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from .. import __version__
from ..axes import SliceLayout, check_channel_count, parse_channels
from ..config import UNetConfig
from ..device import is_out_of_memory, release_device_memory, resolve_device
from ..errors import InputError
from ..halo import MAX_COVER_PROBES, measure_halo, read_probes
from ..inference import predict_tiled, predict_whole
from ..model import UNet
from ..normalize import normalize_slice
from ..postprocess import DEFAULT_MIN_SIZE, SplitRule, resolve_split
from ..tiling import round_up
from . import distributed as ddp
from .agreement import PaintAgreement, paint_agreement, painted_classes
from .checkpoint import load_checkpoint, save_checkpoint
from .data import PaintFeed, as_images, load_sources, painted_slices, smallest_side
from .distributed import DistContext
from .edges import EdgeCalibration, calibrate_edges, painted_objects
from .labels import painted_background
from .losses import LossTerms, annotated_iou, kept_predictions, segmentation_loss
from .sampling import WHOLE_SLICES_FROM, PatchSampler
from .start import StartFit, judge_start
from .weights import border_weights

DEFAULT_STEPS = 500
#: share of the painting held out to validate a fine-tuning run (none from scratch)
FINE_TUNE_VAL_FRACTION = 0.2


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run; ``None`` means "pick from the data and the device".

    mode: "sparse" (painted: 0 = not annotated, 1 = background, 2+ = objects) or "dense"
        (0 = background, distinct values = distinct objects).
    steps: the planned optimiser steps (default 500); the learning-rate schedule follows
        them, so a run does not depend on the machine's speed.
    time_limit: stop after this many seconds even if the planned steps are not done.
    base_channels / depth: size of a network trained from scratch.
    val_fraction: share of annotated blocks (or slices) held out for validation. None:
        :data:`FINE_TUNE_VAL_FRACTION` when fine-tuning (the start must prove itself against
        painting it was not trained on), 0 from scratch (every painted pixel trains; the
        weights returned are the mean of the second half, which needs no validation).
    patience: stop after this many validations without improvement (None: never); from
        scratch it needs a ``val_fraction``, since nothing is held out by default.
    balance: sparse labels only: every painted class weighs the same in each batch's loss,
        however many of its pixels were painted (dense labels balance per image).
    calibrate_edges: after training, segment the painted slices and store with the model the
        edge offset and seed depth at which its objects best match the painted whole objects
        (see :mod:`~napari_tessera.training.edges`); segmenting applies them. False stores none.
    surround: sparse labels, objects painted whole: unpainted pixels within this many pixels
        outside a painted object count as background (the gap to the background or the edge
        of a touching neighbour; :func:`~napari_tessera.training.labels.surroundings`).
        0 for objects painted as strokes inside them.
    channels: the image channels the network reads, in order (e.g. ``(1, 0)``); stored with
        the model, so segmenting an image like this one reads the same. None: all (or, when
        fine-tuning a model that stores them and the image has another number, those).
    start_if_fits: fine-tune the given model only if it already segments the painted
        objects (:func:`~napari_tessera.training.start.judge_start`); otherwise train a new
        network (``base_channels``, ``depth``) as from scratch. The CLI's and the Train
        widget's default start, with the built-in model.
    keep: fine-tuning only: weight of a term that keeps the starting model's own predictions
        where nothing is painted (:func:`~napari_tessera.training.losses.kept_predictions`),
        so a dozen painted objects correct the model without rewriting it. 0: off.
    """

    mode: str = "sparse"
    steps: int | None = None
    time_limit: float | None = None
    batch_size: int | None = None
    patch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 1e-4
    val_fraction: float | None = None
    val_every: int | None = None
    patience: int | None = None
    seed: int = 0
    device: str = "auto"
    base_channels: int = 16
    depth: int = 4
    dice: float = 1.0
    balance: bool = True
    w0: float = 10.0
    sigma: float = 5.0
    elastic: bool = True
    calibrate_edges: bool = True
    surround: float = 2.0
    keep: float = 1.0
    start_if_fits: bool = False
    channels: tuple[int, ...] | None = None
    preview_every: float = 0.0
    preview_slice: int = 0
    checkpoint: str | None = None
    checkpoint_every: float = 30.0

    def __post_init__(self):
        if self.mode not in ("sparse", "dense"):
            raise InputError(f"label mode must be 'sparse' or 'dense', got {self.mode!r}")
        if self.steps is not None and self.steps < 1:
            raise InputError(f"steps must be positive, got {self.steps}")
        if self.time_limit is not None and not (0 < self.time_limit < math.inf):
            raise InputError(f"time limit must be positive (seconds), got {self.time_limit}")
        if self.lr is not None and not (0 < self.lr < math.inf):
            raise InputError(f"learning rate must be positive, got {self.lr}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {self.seed!r}")
        object.__setattr__(self, "channels", parse_channels(self.channels))
        for name in ("surround", "keep"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
                raise InputError(f"{name} must be zero or a positive number, got {v!r}")
        if self.val_fraction is not None and not 0 <= self.val_fraction < 1:
            raise InputError(f"validation fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("batch_size", "patch_size", "val_every", "patience"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise InputError(f"{name.replace('_', ' ')} must be positive, got {v}")


@dataclass(frozen=True)
class TrainUpdate:
    """Progress of a training run (one per step)."""

    step: int
    total_steps: int | None
    elapsed: float
    time_limit: float | None
    loss: float
    lr: float
    val_loss: float | None = None
    val_iou: float | None = None
    best: bool = False
    preview: np.ndarray | None = None  # foreground probability of the preview slice
    preview_slice: int | None = None
    notice: str | None = None  # something to tell the user (e.g. an out-of-memory fallback)
    new_paint: int | None = None  # painted pixels, on the step that took new painting
    info: str | None = None  # something the user may like to know (the start a run took)

    @property
    def fraction(self) -> float:
        """How far the run is, 0..1, by steps or time, whichever is further."""
        f = 0.0
        if self.total_steps:
            f = max(f, self.step / self.total_steps)
        if self.time_limit:
            f = max(f, self.elapsed / self.time_limit)
        return min(f, 1.0)


@dataclass
class TrainResult:
    model: UNet
    best_step: int
    best_val_iou: float | None
    steps: int
    elapsed: float
    stopped: str  # "steps", "time", "early", "requested"
    history: list[dict[str, Any]] = field(default_factory=list)
    edges: EdgeCalibration | None = None  # the stored split rule and how it was chosen
    planned_steps: int | None = None  # the run's plan (a time limit may stop it earlier)
    averaged: tuple[int, int, int] | None = None  # (weights averaged, first step, last step)
    agreement: PaintAgreement | None = None  # the kept model on the painted pixels
    start_fit: StartFit | None = None  # whether the given start was fine-tuned, and why

    def describe_kept(self) -> str:
        """Which weights the run returns, for the CLI and the Train widget."""
        if self.averaged is not None:
            n, first, last = self.averaged
            return f", kept the mean of the weights at {n} steps from {first} to {last}"
        if self.best_val_iou is None:
            return f", kept the last step, {self.steps} (no validation)"
        iou = f"validation IoU {self.best_val_iou:.3f}"
        if self.best_step == 0:
            why = "the mean of the steps did not validate better"
            if self.planned_steps and self.steps <= AVERAGE_FROM * self.planned_steps:
                why = "stopped before the steps were averaged"
            return f", kept the starting model: {why} ({iou})"
        return f", kept step {self.best_step} ({iou})"


def _auto(cfg: TrainConfig, yx: tuple[int, int], device: torch.device, fine_tune: bool):
    side = min(yx)
    patch = cfg.patch_size or (128 if device.type == "cpu" else 256)
    patch = max(32, min(patch, (side // 16) * 16 if side >= 32 else 32))
    # on the CPU a small batch buys more steps in a time budget, which helps more than a
    # larger batch does (docs/benchmarks.md, "Batch size")
    batch = cfg.batch_size or (4 if device.type == "cpu" else 16)
    lr = cfg.lr or (3e-4 if fine_tune else 2e-3)
    # a fixed plan of steps, whatever the machine's speed, so the same command gives the same
    # model; a time limit only cuts a run short
    steps = cfg.steps or DEFAULT_STEPS
    val_every = cfg.val_every or 25
    return patch, batch, lr, steps, val_every


def _lr_at(base: float, step: int, steps: int):
    """Linear warm-up over 20 steps, then cosine decay to 5% over the planned steps."""
    warm = min(1.0, (step + 1) / 20)
    frac = min(step / steps, 1.0)
    return base * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))


def iter_train(
    image,
    labels=None,
    *,
    axes: str = "YX",
    config: TrainConfig | None = None,
    model: UNet | None = None,
    resume: str | Path | None = None,
    stop: threading.Event | None = None,
    dist_ctx: DistContext | None = None,
    paint: PaintFeed | None = None,
):
    """Train (or fine-tune ``model``) on painted labels; yields :class:`TrainUpdate`.

    ``model`` is trained in place, as PyTorch trains a module: pass a copy
    (``copy.deepcopy``) to keep the start as it was (the Train widget does). Its starting
    weights are validated first and kept unless a step validates better.

    image: array with ``axes`` (2D, stacks, channels as in :func:`predict_tiled`).
    labels: integer array shaped like the image without its channel axis.
    Or a set of images: ``image`` a sequence of :class:`TrainImage` (each with its labels and
    axes) or of ``(image, labels)`` pairs with ``axes``, and ``labels`` None. Sizes may
    differ; channels must not. Patches come from all of them, in proportion to their paint.
    resume: a checkpoint written by an earlier run (``config.checkpoint``) to continue from.
    stop: set it to end training cleanly after the current step; the model is kept.
    dist_ctx: this process's place in a multi-process run (see
    :mod:`napari_tessera.training.distributed`; ``from_env()`` under torchrun): the global
    batch is shared between the processes, only rank 0 writes checkpoints and previews.
    paint: new labels posted while the run trains (:class:`PaintFeed`, by the image's place
    in the set) are taken at the next validation interval: patches, validation blocks and
    the split rule come from the new painting from then on, and the kept step is chosen
    anew on it. Painting that cannot be used (a new class, nothing left painted) is
    reported in the update's notice and the run goes on with what it had.
    Returns a :class:`TrainResult` (the generator's return value).
    """
    items = as_images(image, labels, axes)
    if paint is not None and dist_ctx is not None:
        raise InputError("new painting cannot be taken while training on several processes")
    run = _Run(items, config or TrainConfig(), model, resume, stop, dist_ctx, paint)
    while (reason := run.stop_reason()) is None:
        yield run.step()
        run.checkpoint_if_due()
        if run.cfg.patience and run.bad_validations >= run.cfg.patience:
            reason = "early"
            break
    return run.finish(reason)


#: the share of the planned steps after which the weights are averaged (see _Run.finish)
AVERAGE_FROM = 0.5


@dataclass
class _Best:
    """The weights a run returns: the best validated so far (None: the latest)."""

    state: dict[str, Any] | None = None
    score: tuple[float, float] | None = None
    step: int = 0
    iou: float | None = None


class _Run:
    """One training run, read in the order it happens.

    ``__init__`` sets it up: labels, starting model, plan, patches, optimiser, resumed state.
    :meth:`step` makes one optimiser step (and validates, previews) and reports it;
    :meth:`validate` judges the weights and keeps the best; :meth:`checkpoint` writes what a
    resume needs; :meth:`finish` returns the mean of the weights of the run's second half
    (or a good start that their mean did not beat), measures their halo and calibrates their
    split rule.
    """

    def __init__(self, items, cfg: TrainConfig, model, resume, stop, dist_ctx, paint=None):
        self.stop, self.dist_ctx, self.paint = stop, dist_ctx, paint
        device = resolve_device(cfg.device)
        if dist_ctx is not None:
            device = ddp.setup(dist_ctx, device)
        self.device = device
        self.main_rank = dist_ctx is None or dist_ctx.is_main
        state = load_checkpoint(resume) if resume is not None else None
        model = self._choose_start(items, cfg, model, state)
        cfg, model, self.fine_tune = _starting_point(cfg, model, state)
        # fine-tuning keeps the start's split rule unless the painted objects clearly want another
        self.base_rule = resolve_split(model, instances=True) if self.fine_tune else SplitRule(True)
        self.items, self.paint_updates = list(items), 0
        self.sources = load_sources(
            items,
            mode=cfg.mode,
            channels=cfg.channels,
            model=model,
            surround=cfg.surround if cfg.mode == "sparse" else 0.0,
        )
        self.painted = painted_slices(self.sources)  # the run's slices: (source, index)
        self.n_classes = self.sources[0].targets.n_classes
        torch.manual_seed(cfg.seed)  # before the network is built: it fixes the initial weights
        self.model = _network(model, self.n_classes, self.sources[0].lay, cfg)
        self.cfg = cfg
        self._plan(state)
        self.rng = np.random.default_rng(cfg.seed)
        # dense labels carry the paper's class weights per image already (border_weights)
        self.balance = cfg.balance and cfg.mode == "sparse"
        self._soft: dict[tuple[int, int], np.ndarray] = {}  # the start's predictions
        self.start = copy.deepcopy(model) if self.fine_tune and cfg.keep > 0 else None
        self.sampler = self._sampler(self.painted)
        self._optimiser()
        self.step_no, elapsed_before = 0, 0.0
        self.best = _Best()
        self.average: AveragedModel | None = None  # the weights of the second half, averaged
        self.averaged_steps: list[int] = []
        self.history: list[dict[str, Any]] = []
        self.start_score: tuple[float, float] | None = None  # a good start's (loss, IoU)
        if state is not None:
            self.opt.load_state_dict(state.optimizer)
            self.step_no, elapsed_before = state.step, state.elapsed
            self.start_score = state.start_score
            self.best = _Best(
                state.best_state if state.best_score is not None else None,
                state.best_score,
                state.best_step,
                state.best_val_iou,
            )
            self.history = state.history
            if state.average_state:
                self.average = AveragedModel(self.model, use_buffers=True)
                self.average.load_state_dict(state.average_state)
                self.averaged_steps = list(state.averaged_steps)
            self.rng.bit_generator.state = state.rng_state
            self.sampler.rng = self.rng
        self.bad_validations = 0
        self.chunks = 1  # pieces each batch is split into (more after an out-of-memory error)
        self.last_validated = -1
        self.t0 = time.perf_counter() - elapsed_before
        self.last_preview = -math.inf
        self.last_ckpt = time.perf_counter()
        if state is None and self.fine_tune and self.sampler.val_regions:
            self._validate_start()

    # -- set-up -----------------------------------------------------------------------------
    def _choose_start(self, items, cfg: TrainConfig, model, state):
        """The model to fine-tune, or None. A given model is judged on the painting first
        (:mod:`.start`): with ``start_if_fits`` the run fine-tunes it only if it fits; a start
        that fits is a good start, which the run keeps unless the mean of the steps validates
        better (:meth:`_validate_start`)."""
        self.start_fit, self.start_name = None, _name(model) if model is not None else ""
        if state is not None or model is None:
            return model
        self.start_fit = judge_start(
            items,
            model,
            mode=cfg.mode,
            channels=cfg.channels,
            device=self.device,
            name=self.start_name,
        )
        if self.dist_ctx is not None:  # every rank takes rank 0's judgement
            (fits,) = ddp.from_rank0((float(self.start_fit.fits),), self.device)
            why = self.start_fit.why or "the first process judged it a poor start"
            self.start_fit = replace(self.start_fit, fits=bool(fits), why=why)
        if cfg.start_if_fits and not self.start_fit.fits:
            return None
        return model

    def _plan(self, state) -> None:
        """Patch and batch size, learning rate, planned steps, validation interval."""
        cfg, model = self.cfg, self.model
        yx = smallest_side(self.sources)
        patch, batch, lr, steps, self.val_every = _auto(cfg, yx, self.device, self.fine_tune)
        if self.dist_ctx is not None and cfg.batch_size is None:
            batch = round_up(batch, self.dist_ctx.world_size)  # the automatic batch shares evenly
        if state is not None:
            lr = cfg.lr or float(state.run_config.get("lr") or lr)  # the same schedule
            if not cfg.steps:
                steps = int(state.run_config.get("steps") or steps)  # finish the interrupted run
        if max(yx) < 16:
            raise InputError(f"image is too small to train on ({yx[0]}x{yx[1]} px)")
        blocks = len(self.painted) < WHOLE_SLICES_FROM
        if cfg.patch_size is None and blocks and cfg.val_fraction > 0:
            # each image shares its area between training and validation: keep patches small
            # enough that windows fit beside the validation blocks
            patch = min(patch, max(32, (min(yx) // 2 // 16) * 16))
        patch = min(patch, max(32, (min(yx) // 16) * 16))
        m = model.size_multiple  # a patch must pool down to at least 2x2 at the deepest level
        self.patch = max(round_up(patch, m), 2 * m)
        self.batch, self.base_lr, self.steps = batch, lr, steps

    def _sampler(self, painted) -> PatchSampler:
        """Normalised painted slices, their targets and weights, and the validation split."""
        cfg = self.cfg
        norm = self.model.config.normalization
        images, classes, weights = [], [], [] if cfg.mode == "dense" else None
        for src, s in painted:
            where = _where(src, s, len(self.sources))
            images.append(normalize_slice(src.lay.slice_view(src.image, s), norm, where=where))
            classes.append(src.targets.classes[s])
            if weights is not None:
                inst = src.targets.instances[s]
                weights.append(border_weights(inst, w0=cfg.w0, sigma=cfg.sigma))
        soft = None  # fine-tuning keeps the starting model's predictions where nothing is painted
        if self.start is not None:
            soft = self._start_predictions(painted)

        def make(val_fraction: float) -> PatchSampler:
            return PatchSampler(
                images,
                classes,
                weights,
                patch=self.patch,
                val_fraction=val_fraction,
                rng=self.rng,
                elastic=cfg.elastic,
                soft=soft,
            )

        sampler = make(cfg.val_fraction)
        if sampler.val_regions and not sampler.can_place():
            # the image is too small to hold validation blocks apart from training patches
            sampler = make(0.0)
        return sampler

    def _start_predictions(self, painted) -> list[np.ndarray]:
        """The starting model's class probabilities for each painted ``(source, slice)``, as
        it segments them (float16 to halve the memory); kept for slices painted later."""
        out = []
        for src, s in painted:
            key = (id(src.image), s)
            if key not in self._soft:
                sl = src.lay.slice_view(src.image, s)
                prob = predict_tiled(self.start, sl, axes="CYX", device=self.device, halo="exact")
                self._soft[key] = prob.astype(np.float16)
            out.append(self._soft[key])
        return out

    def _optimiser(self) -> None:
        """The network the step runs (the model or its DDP wrapper), optimiser, precision."""
        self.model.to(self.device).train()
        self.net = self.model
        self.part = slice(None)  # this process's share of each batch
        if self.dist_ctx is not None:
            self.part = ddp.share(self.batch, self.dist_ctx)
            self.net = ddp.wrap(self.model, self.device)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=self.base_lr, weight_decay=self.cfg.weight_decay
        )
        self.amp_dtype, self.scaler = None, None
        if self.device.type == "cuda":
            bf16 = torch.cuda.is_bf16_supported()
            self.amp_dtype = torch.bfloat16 if bf16 else torch.float16
            if not bf16:
                self.scaler = torch.amp.GradScaler("cuda")

    # -- the loop ---------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def stop_reason(self) -> str | None:
        """Why the run ends before the next step, or None. Under DDP every rank decides the
        same, from agreed values only."""
        now = self.elapsed()
        # one look at the stop request per step: under DDP a request that arrives after the
        # agreement below must wait for the next step, or this rank alone would stop
        requested = self.stop is not None and self.stop.is_set()
        if self.dist_ctx is None:
            return self._reason(now, requested)
        wants = self._reason(now, requested) is not None
        anyone, now = ddp.agree(wants, now, self.device)  # on one clock (the slowest rank's)
        return self._reason(now, False) or ("requested" if anyone else None)

    def _reason(self, now: float, requested: bool) -> str | None:
        if requested:
            return "requested"
        if self.step_no >= self.steps:
            return "steps"
        if self.cfg.time_limit and now >= self.cfg.time_limit:
            return "time"
        return None

    def step(self) -> TrainUpdate:
        """One optimiser step on a fresh batch, validated and previewed when due."""
        lr = _lr_at(self.base_lr, self.step_no, self.steps)
        for g in self.opt.param_groups:
            g["lr"] = lr
        notices: list[str] = []
        new_paint = None
        if self.paint is not None and self.step_no and self.step_no % self.val_every == 0:
            new_paint = self._take_paint(notices)
        x, y, w, soft = self.sampler.sample(self.batch)  # the global batch (same on every rank)
        if self.dist_ctx is not None:
            p = self.part
            x, y = x[p], y[p]
            w = w[p] if w is not None else None
            soft = soft[p] if soft is not None else None
        loss = self._optimise(x, y, w, soft, notices)
        self.step_no += 1
        if self.dist_ctx is not None:
            loss = ddp.mean(loss, self.device)
        record: dict[str, Any] = {
            "step": self.step_no,
            "elapsed": self.elapsed(),
            "loss": loss,
            "lr": lr,
        }
        val_loss = val_iou = None
        is_best = False
        due = self.step_no % self.val_every == 0 or self.step_no == self.steps
        if self.sampler.val_regions and due:
            val_loss, val_iou, is_best = self.validate()
            record.update(val_loss=val_loss, val_iou=val_iou)
            self.bad_validations = 0 if is_best else self.bad_validations + 1
        elif not self.sampler.val_regions:  # no validation: the latest model is the best
            self.best = _Best(None, None, self.step_no, None)
        if due and self.step_no > AVERAGE_FROM * self.steps:
            self._add_to_average()
        self.history.append(record)
        preview = self._preview_if_due(notices)
        return TrainUpdate(
            step=self.step_no,
            total_steps=self.steps,
            elapsed=self.elapsed(),
            time_limit=self.cfg.time_limit,
            loss=loss,
            lr=lr,
            val_loss=val_loss,
            val_iou=val_iou,
            best=is_best,
            preview=preview,
            preview_slice=self.cfg.preview_slice if preview is not None else None,
            notice="; ".join(notices) or None,
            new_paint=new_paint,
            info=self._start_info() if self.step_no == 1 else None,
        )

    def _start_info(self) -> str | None:
        """The start the run took, when it chose one (said with the first step)."""
        if self.start_fit is None or not self.cfg.start_if_fits:
            return None
        return self.start_fit.describe(self.start_name)

    def _take_paint(self, notices: list[str]) -> int | None:
        """Learn from the painting posted since the last round: new targets, patches and
        validation blocks; the kept step is chosen anew on them. Returns the painted pixels
        (None: nothing new, or painting that cannot be used, told in ``notices``)."""
        new = self.paint.take()
        if not new:
            return None
        items = [replace(it, labels=new.get(k, it.labels)) for k, it in enumerate(self.items)]
        cfg = self.cfg
        try:
            if max(new) >= len(items) or min(new) < 0:
                raise InputError(f"there is no image {max(new)} in the training set")
            sources = load_sources(
                items,
                mode=cfg.mode,
                channels=cfg.channels,
                model=self.model,  # the channels and classes the network has
                surround=cfg.surround if cfg.mode == "sparse" else 0.0,
            )
            painted = painted_slices(sources)
            sampler = self._sampler(painted)
        except (InputError, RuntimeError) as err:  # RuntimeError: no patch fits
            notices.append(
                f"the new painting is not used, training goes on with the earlier: {err}"
            )
            return None
        self.items, self.sources, self.painted, self.sampler = items, sources, painted, sampler
        self.paint_updates += 1
        # the validation blocks changed: scores on the earlier ones do not compare
        self.best, self.bad_validations, self.start_score = _Best(), 0, None
        self.average, self.averaged_steps = None, []  # weights for the earlier painting
        return sum(int(np.count_nonzero(src.labels)) for src in sources)

    def _optimise(self, x, y, w, soft, notices: list[str]) -> float:
        """The optimiser step; out of memory: the same batch in smaller pieces (gradients
        accumulated), then the CPU. Each fallback is added to ``notices``."""
        while True:
            try:
                return train_step(
                    self.net,
                    self.opt,
                    self.scaler,
                    x,
                    y,
                    w,
                    self.chunks,
                    self.device,
                    self.amp_dtype,
                    dice=self.cfg.dice,
                    balance=self.balance,
                    soft=soft,
                    keep=self.cfg.keep,
                )
            except Exception as err:  # only out-of-memory errors are handled
                if not is_out_of_memory(err):
                    raise
            self.opt.zero_grad(set_to_none=True)
            release_device_memory(self.device)
            notices.append(self._fall_back(len(x)))

    def _fall_back(self, n: int) -> str:
        """The next way to fit a batch of ``n`` after running out of memory, said."""
        kind = self.device.type.upper()
        if self.chunks < n:
            self.chunks = min(n, self.chunks * 2)
            return (
                f"{kind} out of memory: retrying with {-(-n // self.chunks)} patches per pass "
                f"(gradients accumulated, same batch of {n})"
            )
        if self.device.type != "cpu" and self.dist_ctx is not None:
            raise InputError(
                f"{kind} out of memory even one patch at a time; "
                "use a smaller --patch-size or model"
            )
        if self.device.type != "cpu":
            self.device = torch.device("cpu")
            self.model.to(self.device)
            _optimizer_to(self.opt, self.device)
            self.amp_dtype, self.scaler = None, None
            return f"{kind} out of memory: training on the CPU"
        raise InputError(
            "out of memory even one patch at a time on the CPU; use a smaller patch size or model"
        )

    def _preview_if_due(self, notices: list[str]) -> np.ndarray | None:
        cfg = self.cfg
        if not (self.main_rank and cfg.preview_every > 0):
            return None
        if time.perf_counter() - self.last_preview < cfg.preview_every:
            return None
        self.last_preview = time.perf_counter()
        try:
            first = self.sources[0]
            return _preview(self.model, first.image, first.lay, cfg.preview_slice)
        except Exception as err:  # only out-of-memory errors are handled
            if not is_out_of_memory(err):
                raise
        release_device_memory(self.device)
        self.cfg = replace(cfg, preview_every=0.0)
        notices.append(f"{self.device.type.upper()} out of memory: live preview turned off")
        return None

    def _add_to_average(self) -> None:
        """Add the current weights (and normalisation statistics) to the run's mean.

        Late in a run the weights still move from step to step, and with a dozen painted
        objects a single step's objects on the rest of the image swing with them; their mean
        (stochastic weight averaging, Izmailov et al. 2018) does not depend on which step
        a few held-out blocks favour (docs/benchmarks.md, "Which weights a run returns")."""
        if self.average is None:
            self.average = AveragedModel(self.model, use_buffers=True)
        self.average.update_parameters(self.model)
        self.averaged_steps.append(self.step_no)

    def _validate_start(self) -> None:
        """A good start (one that already segments the painted objects, as judged by
        :func:`~.start.judge_start`) is kept unless the mean of the steps (:meth:`_averaged`)
        validates better on both counts: a lower loss and an IoU at least as high. Single
        steps do not compete with it: one that a few held-out blocks favour can still lose
        objects elsewhere. Fine-tuning sharpens the probabilities, which lowers the loss of
        weights that get fewer held-out pixels right; the IoU keeps those out too. A poor
        start has nothing to keep, and on a few held-out blocks its loss or IoU can still come
        out highest, so it is not a candidate."""
        loss, iou, _ = self.validate()
        if self.start_fit is not None and self.start_fit.fits:
            self.start_score = (loss, iou)
        else:
            self.best = _Best()

    def validation_batching(self, model) -> tuple[int, int]:
        """The context around each held-out region and the regions per validation batch.

        Each region is seen with the network's receptive field around it, as whole-image
        inference sees it; a batch holds about as many pixels as a training batch."""
        context = model.exact_halo()
        win = self.sampler.val_regions[0].size + 2 * context
        return context, max(1, (-(-self.batch // self.chunks)) * self.patch**2 // (win * win))

    def _scores(self, model) -> tuple[float, float]:
        """Validation loss and IoU of ``model`` (rank 0's, under DDP)."""
        context, val_batch = self.validation_batching(model)
        v_loss, v_iou = validation_scores(
            model, self.sampler, val_batch, self.device, self.cfg.dice, context, self.balance
        )
        if self.dist_ctx is not None:  # rank 0's numbers decide for every rank
            v_loss, v_iou = ddp.from_rank0((v_loss, v_iou), self.device)
        return v_loss, v_iou

    def validate(self) -> tuple[float, float, bool]:
        """Validate the current weights; keep them if they are the best so far."""
        v_loss, v_iou = self._scores(self.model)
        self.last_validated = self.step_no
        # the lowest validation loss (IoU breaks ties): IoU on held-out scribbles often sits
        # at 1.0 while the model still changes, and the loss keeps telling steps apart
        score = (-v_loss, v_iou)
        better = self.best.score is None or score > self.best.score
        if better and self.start_score is None:  # a good start gives way to the mean only
            self.best = _Best(copy.deepcopy(self.model.state_dict()), score, self.step_no, v_iou)
            return v_loss, v_iou, True
        return v_loss, v_iou, False

    # -- checkpoints ------------------------------------------------------------------------
    def run_config(self) -> dict[str, Any]:
        return {
            **asdict(self.cfg),
            "patch_size": self.patch,
            "batch_size": self.batch,
            "lr": self.base_lr,
            "steps": self.steps,
            "fine_tune": self.fine_tune,
            "images": len(self.sources),
            "validation_regions": len(self.sampler.val_regions),
            "paint_updates": self.paint_updates,
        }

    def checkpoint_if_due(self) -> None:
        due = time.perf_counter() - self.last_ckpt >= self.cfg.checkpoint_every
        if self.main_rank and self.cfg.checkpoint and due:
            self.last_ckpt = time.perf_counter()
            self.checkpoint()

    def checkpoint(self) -> None:
        """The latest weights and optimiser state, and the best so far, to resume from."""
        best = self.best
        save_checkpoint(
            self.cfg.checkpoint,
            self.model,
            self.opt,
            step=self.step_no,
            elapsed=self.elapsed(),
            best_state=best.state if best.state is not None else self.model.state_dict(),
            best_step=best.step,
            best_val_iou=best.iou,
            best_score=best.score,
            history=self.history,
            rng_state=self.rng.bit_generator.state,
            run_config=self.run_config(),
            average_state=self.average.state_dict() if self.average is not None else None,
            averaged_steps=self.averaged_steps,
            start_score=self.start_score,
        )

    # -- the end ----------------------------------------------------------------------------
    def finish(self, stopped: str) -> TrainResult:
        """The kept weights with their halo, split rule and provenance."""
        if self.sampler.val_regions and self.step_no > 0 and self.last_validated != self.step_no:
            # the steps since the last validation (a stop, a time limit) get their chance too
            v_loss, v_iou, _ = self.validate()
            self.history[-1].update(val_loss=v_loss, val_iou=v_iou)
        if self.cfg.checkpoint and self.main_rank:
            self.checkpoint()
        averaged = self._averaged()
        model = self._kept_model(averaged)
        model.metadata = {k: v for k, v in model.metadata.items() if k != "halo"}  # a base's
        if self.main_rank and model.config.padding == "same":
            self._store_halo(model)
        edges, agreement = self.judge(model) if self.main_rank else (None, None)
        model.metadata = self._metadata(model, edges, agreement, stopped, averaged)
        return TrainResult(
            model,
            self.best.step,
            self.best.iou,
            self.step_no,
            self.elapsed(),
            stopped,
            self.history,
            edges,
            planned_steps=self.steps,
            averaged=averaged,
            agreement=agreement,
            start_fit=self.start_fit,
        )

    def judge(self, model: UNet) -> tuple[EdgeCalibration | None, PaintAgreement]:
        """``model`` on the painted slices, segmented as a user would: the split rule its
        objects match the painted ones best with (None when calibration is off; see
        ``edges``), and whether it has learnt the painting (``agreement``)."""
        mode = self.cfg.mode
        predicted = painted_classes(model, self.painted, self.device)
        background = [painted_background(src.labels[s], mode) for src, s in self.painted]
        edges = None
        if self.cfg.calibrate_edges:
            objects = [painted_objects(src.labels[s], mode) for src, s in self.painted]
            edges = calibrate_edges(
                predicted, objects, base=self.base_rule, trust_base=self.fine_tune
            )
        score = edges.score if edges is not None else None
        return edges, paint_agreement(predicted, background, score)

    def _averaged(self) -> tuple[int, int, int] | None:
        """``(count, first, last)`` of the averaged steps the run returns, or None: no step
        reached the second half, or the mean does not beat a good start on both loss and IoU
        (:meth:`_validate_start`; the start comes back unchanged)."""
        if self.average is None:
            return None
        if self.start_score is not None:
            loss, iou = self._scores(self.average.module)
            if loss >= self.start_score[0] or iou < self.start_score[1]:
                return None
        steps = self.averaged_steps
        return len(steps), steps[0], steps[-1]

    def _kept_model(self, averaged: tuple[int, int, int] | None) -> UNet:
        model = self.model
        if averaged is not None:
            model.load_state_dict(self.average.module.state_dict())
        elif self.best.state is not None:
            model.load_state_dict(self.best.state)
        syncbn = any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
        if self.net is not model and syncbn:
            plain = UNet(model.config, metadata=model.metadata)  # plain BatchNorm again
            plain.load_state_dict(model.state_dict())
            model = plain.to(self.device)
        return model.eval()

    def _store_halo(self, model: UNet) -> None:
        """The context these weights need around a tile, measured over the annotated slices
        and stored, so segmenting with them (the calibration too) needs no probe."""
        try:
            probes = []
            for src in self.sources:
                if src.targets.slices:
                    probes += read_probes(
                        model, src.image, src.lay, slices=src.targets.slices, cover=True
                    )
            probes = _spread(probes, MAX_COVER_PROBES)
            model.metadata["halo"] = measure_halo(model, probes, device=self.device).as_metadata()
        except Exception as err:  # out of memory: no halo stored; segmenting measures it
            if not is_out_of_memory(err):
                raise

    def _metadata(
        self,
        model: UNet,
        edges: EdgeCalibration | None,
        agreement: PaintAgreement | None,
        stopped: str,
        averaged: tuple[int, int, int] | None,
    ) -> dict:
        # a base model's split rule gives way to this run's calibration
        replaced = ("edge_offset", "seed_depth", "min_size", "channels")
        meta = {k: v for k, v in model.metadata.items() if k not in replaced}
        pick = self.sources[0].lay.pick
        if pick is not None:
            meta["channels"] = list(pick)
        if edges is not None and edges.offset:
            meta["edge_offset"] = edges.offset
        if edges is not None and edges.seed_depth:
            meta["seed_depth"] = edges.seed_depth
        if edges is not None and edges.min_size != DEFAULT_MIN_SIZE:
            meta["min_size"] = edges.min_size
        base = (model.metadata.get("provenance") or {}).get("name") if self.fine_tune else None
        return {
            **meta,
            "class_names": _class_names(self.n_classes, self.cfg.mode),
            "provenance": {
                "software": f"napari-tessera {__version__}",
                "trained_from": "fine-tuned" if self.fine_tune else "scratch",
                "base_model": base,
                "label_mode": self.cfg.mode,
                "steps": self.step_no,
                "best_step": self.best.step,
                "best_val_iou": self.best.iou,
                "averaged_steps": list(averaged) if averaged is not None else None,
                "stopped": stopped,
                "seed": self.cfg.seed,
                "processes": self.dist_ctx.world_size if self.dist_ctx is not None else 1,
                "config": self.run_config(),
                "edges": edges.as_metadata() if edges is not None else None,
                "paint_agreement": agreement.as_metadata() if agreement is not None else None,
                "start_fit": self.start_fit.as_metadata() if self.start_fit else None,
            },
        }


def _starting_point(cfg: TrainConfig, model: UNet | None, state):
    """``(config, model, fine_tune)``: a resumed run takes its model and the settings that
    rebuild the same validation split and loss from its checkpoint."""
    if state is None:
        fine_tune = model is not None
        if cfg.val_fraction is None:
            cfg = replace(cfg, val_fraction=FINE_TUNE_VAL_FRACTION if fine_tune else 0.0)
        if cfg.patience and not cfg.val_fraction:
            raise InputError("patience stops a run by its validation: give a validation fraction")
        return cfg, model, fine_tune
    rc = state.run_config
    if rc.get("mode", cfg.mode) != cfg.mode:
        raise InputError(f"the checkpoint was trained with {rc['mode']} labels, not {cfg.mode}")
    cfg = replace(
        cfg,
        seed=int(rc.get("seed", cfg.seed)),
        val_fraction=float(rc.get("val_fraction", cfg.val_fraction or 0.0)),
        patch_size=cfg.patch_size or rc.get("patch_size"),
        surround=float(rc.get("surround", cfg.surround)),
        keep=float(rc.get("keep", cfg.keep)),
        channels=cfg.channels if cfg.channels is not None else rc.get("channels"),
    )
    return cfg, state.model, bool(rc.get("fine_tune", False))


def _network(model: UNet | None, n_classes: int, lay: SliceLayout, cfg: TrainConfig) -> UNet:
    """The model to train: a new one from the config, or the given one if it fits."""
    if model is None:
        model = UNet(
            UNetConfig(
                in_channels=lay.channels,
                n_classes=n_classes,
                base_channels=cfg.base_channels,
                depth=cfg.depth,
            )
        )
    else:
        check_channel_count(model.config.in_channels, lay)
    if model.config.padding != "same":
        raise InputError("training supports 'same'-padding networks")
    return model


def train_step(
    model,
    opt,
    scaler,
    x,
    y,
    w,
    chunks,
    device,
    amp_dtype,
    *,
    dice,
    balance=False,
    soft=None,
    keep=0.0,
) -> float:
    """One optimiser step on a batch, run in ``chunks`` pieces whose gradients add up.

    Each piece's loss is weighted by its share of the batch, so the gradient matches the
    whole-batch one up to the Dice term (computed per piece) and BatchNorm batch statistics.
    ``soft``: the starting model's predictions, kept with weight ``keep`` where nothing is
    painted.

    Each step of :func:`iter_train` calls ``loop.train_step`` by its module name, so a test or a
    tool can wrap it to watch every batch (this process's share of it) and the weights before
    each update.
    """
    opt.zero_grad(set_to_none=True)
    n = len(x)
    size = -(-n // chunks)
    total = 0.0
    for a in range(0, n, size):
        xt = torch.from_numpy(x[a : a + size]).to(device)
        yt = torch.from_numpy(y[a : a + size]).to(device)
        wt = torch.from_numpy(w[a : a + size]).to(device) if w is not None else None
        # under DistributedDataParallel the gradients are averaged once, with the last piece
        last = a + size >= n
        sync = model.no_sync() if hasattr(model, "no_sync") and not last else nullcontext()
        with sync:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(xt)
            loss = segmentation_loss(logits.float(), yt, wt, dice=dice, balance=balance)
            if soft is not None and keep > 0:
                st = torch.from_numpy(soft[a : a + size]).to(device)
                loss = loss + keep * kept_predictions(logits.float(), yt, st)
            loss = loss * (len(xt) / n)
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
        total += float(loss.detach())
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    return total


def _optimizer_to(opt: torch.optim.Optimizer, device: torch.device) -> None:
    for st in opt.state.values():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                st[k] = v.to(device)


def _class_names(n: int, mode: str) -> list[str]:
    if mode == "dense" or n == 2:
        return ["background", "object"]
    return ["background"] + [f"class {k}" for k in range(1, n)]


@torch.no_grad()
def validation_scores(
    model,
    sampler: PatchSampler,
    batch: int,
    device,
    dice: float,
    context: int = 0,
    balance: bool = False,
):
    """Loss and IoU on the validation regions, each seen with ``context`` pixels around it:
    the loss of all of them taken as one batch (:class:`~.losses.LossTerms`).

    Every validation of :func:`iter_train` calls ``loop.validation_scores`` by its module name
    (a test or a tool can wrap it to see what is validated, and how)."""
    was = model.training
    model.eval()
    terms, inter, union = None, 0.0, 0.0
    try:
        for x, y, w in sampler.validation_batches(batch, context):
            logits = model(torch.from_numpy(x).to(device)).float()
            yt = torch.from_numpy(y).to(device)
            wt = torch.from_numpy(w).to(device) if w is not None else None
            part = LossTerms.of(logits, yt, wt)
            terms = part if terms is None else terms + part
            i, u = annotated_iou(logits, yt)
            inter += i
            union += u
    finally:
        model.train(was)
    loss = float(terms.loss(dice=dice, balance=balance)) if terms is not None else 0.0
    return loss, (inter / union if union else 1.0)


def _name(model: UNet) -> str:
    """How messages name a model a run may start from."""
    name = (model.metadata.get("provenance") or {}).get("name")
    return f"the {name} model" if name else "the starting model"


def _spread(items: list, n: int) -> list:
    """At most ``n`` of ``items``, evenly spread over the list."""
    if len(items) <= n:
        return items
    return [items[int(k)] for k in np.linspace(0, len(items) - 1, n).round()]


def _where(src, s: int, n_sources: int) -> str:
    """How an error names slice ``s`` of ``src``."""
    if n_sources == 1:
        return f"slice {s}"
    return f"{src.name}, slice {s}" if src.lay.n_slices > 1 else src.name


@torch.no_grad()
def _preview(model, image, lay, s: int) -> np.ndarray:
    """Foreground probability (1 - background) of slice ``s`` with the current weights."""
    s = min(max(s, 0), lay.n_slices - 1)
    sl = np.asarray(lay.slice_view(image, s))
    prob = predict_whole(model, sl, pad=model.size_multiple)
    return (1.0 - prob[0]) if prob.shape[0] > 1 else prob[0]


def train(image, labels=None, **kwargs) -> TrainResult:
    """Run :func:`iter_train` to the end and return its :class:`TrainResult`."""
    from ..inference import drain

    return drain(iter_train(image, labels, **kwargs))


__all__ = ["TrainConfig", "TrainResult", "TrainUpdate", "iter_train", "train"]
