"""The optimizer and the learning-rate schedule of a training run.

optimizer='adamw' is nanoGPT's: one AdamW, weight decay on matrices and embeddings only (GPT.configure_optimizers).
optimizer='muon' is the modern recipe's: PyTorch's Muon (Jordan et al. 2024) for the 2-D weight matrices inside the
transformer blocks, AdamW for everything else (embeddings, LM head, norm gains, biases), which Muon is not made for.
Both follow the same schedule, each from its own peak learning rate (learning_rate, muon_lr); under Muon the
token and value embeddings and the learned scalars (x0 shares, residual and backout scales) may have their own AdamW
peaks (embedding_lr, scalar_lr), and Muon's momentum may warm up (muon_momentum_warmup).

lr_schedule='cosine' is nanoGPT's: linear warmup, cosine decay to min_lr at lr_decay_iters. 'wsd' (warmup, stable,
decay) holds the peak and decays linearly to min_lr over the last wsd_decay_frac of lr_decay_iters (Hägele et al.
2024); it lets a short run spend longer at the peak.
"""

import math

import torch

from nanogpt.errors import UserError
from nanogpt.model import adamw

OPTIMIZERS = ("adamw", "muon")
LR_SCHEDULES = ("cosine", "wsd")


def get_lr(it, cfg, peak=None):
    """The learning rate at iteration it for a group whose peak is `peak` (default learning_rate); min_lr scales
    with the peak, so every group decays to the same fraction of its own peak."""
    peak = cfg.learning_rate if peak is None else peak
    floor = cfg.min_lr * (peak / cfg.learning_rate) if cfg.learning_rate else 0.0
    if not cfg.decay_lr:
        return peak
    if it < cfg.warmup_iters:
        return peak * (it + 1) / (cfg.warmup_iters + 1)
    if it > cfg.lr_decay_iters:
        return floor
    if cfg.lr_schedule == "wsd":
        decay_start = cfg.lr_decay_iters - cfg.wsd_decay_frac * (cfg.lr_decay_iters - cfg.warmup_iters)
        if it < decay_start:
            return peak
        return floor + (peak - floor) * (cfg.lr_decay_iters - it) / max(1e-9, cfg.lr_decay_iters - decay_start)
    decay_ratio = (it - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return floor + coeff * (peak - floor)


def set_lr(optimizer, it, cfg):
    """Set every group's learning rate for iteration it; returns AdamW's (the one the log shows)."""
    lr = get_lr(it, cfg)
    for group in getattr(optimizer, "adamw", optimizer).param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    if isinstance(optimizer, MuonWithAdamW):
        muon_lr = get_lr(it, cfg, cfg.muon_lr)
        for group in optimizer.muon.param_groups:
            group["lr"] = muon_lr
            group["momentum"] = muon_momentum(it, cfg)
    return lr


def muon_momentum(it, cfg):
    """Muon's momentum at iteration it: from 0.85 up to muon_momentum, linearly over muon_momentum_warmup steps.
    Early gradients change fast; a shorter memory follows them (Jordan et al. 2024's speedrun schedule)."""
    if it >= cfg.muon_momentum_warmup:
        return cfg.muon_momentum
    start = min(0.85, cfg.muon_momentum)
    return start + (cfg.muon_momentum - start) * it / cfg.muon_momentum_warmup


def build_optimizer(model, cfg, device_type, sharded=False):
    """The optimizer cfg.optimizer names, over model's parameters. sharded: the model is under FSDP."""
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "adamw":
        return model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, betas, device_type)
    if sharded:
        # Muon orthogonalises each whole matrix; an FSDP rank holds only a slice of it
        raise UserError("optimizer='muon' does not work with parallelism='fsdp' yet: use --parallelism=ddp")
    hidden = [p for p in model.transformer.h.parameters() if p.dim() == 2]
    in_muon = {id(p) for p in hidden}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in in_muon]
    muon = Muon(hidden, lr=cfg.muon_lr, momentum=cfg.muon_momentum, weight_decay=cfg.muon_weight_decay)
    others = adamw(rest, cfg.weight_decay, cfg.learning_rate, betas, device_type)
    # embeddings and x0 shares at their own peaks: set_lr scales each group's rate by its lr_scale
    # (a tied token embedding is the head too, and stays at the head's rate)
    tokens = [] if model.config.tie_embeddings else [model.transformer.wte.weight]
    embeddings = {id(p) for p in [*tokens, *model.value_embeds.parameters()]}
    split_group(others, embeddings, (cfg.embedding_lr or cfg.learning_rate) / cfg.learning_rate)
    scalars = [p for p in (model.x0_scales, model.resid_scales, model.backout_scale) if p is not None]
    split_group(others, {id(p) for p in scalars}, (cfg.scalar_lr or cfg.learning_rate) / cfg.learning_rate)
    return MuonWithAdamW(muon, others)


def split_group(optimizer, ids, lr_scale):
    """Move the parameters in ids out of their groups into groups of their own (same settings) with lr_scale."""
    if lr_scale == 1.0:
        return
    for group in list(optimizer.param_groups):
        moved = [p for p in group["params"] if id(p) in ids]
        if moved:
            group["params"] = [p for p in group["params"] if id(p) not in ids]
            optimizer.param_groups.append({**group, "params": moved, "lr": group["lr"] * lr_scale,
                                           "lr_scale": lr_scale})
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]


def step_unless(optimizer, found_inf):
    """Take an optimizer step unless found_inf (a float tensor on the device: 1.0 skip, 0.0 step) says not to,
    without the host reading it. Fused AdamW skips in its own kernel, the way GradScaler's found_inf does; other
    optimizers (Muon, non-fused AdamW) step, then put back their parameters and state where found_inf is set,
    which costs a copy of both while stepping."""
    if isinstance(optimizer, MuonWithAdamW):
        step_unless(optimizer.adamw, found_inf)
        step_unless(optimizer.muon, found_inf)
        return
    # the flag is set when the optimizer is built fused; a state dict loaded from a non-fused one (upstream
    # nanoGPT's CPU checkpoints) turns fusion off in its groups, and then the kernel cannot take found_inf
    if getattr(optimizer, "_step_supports_amp_scaling", False) and all(g.get("fused") for g in optimizer.param_groups):
        optimizer.found_inf = found_inf
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
        return
    skip = found_inf.bool()
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    saved = [(t, t.detach().clone()) for p in params
             for t in [p, *optimizer.state.get(p, {}).values()] if torch.is_tensor(t)]
    fresh = [p for p in params if p not in optimizer.state]
    optimizer.step()
    with torch.no_grad():
        for t, before in saved:
            t.copy_(torch.where(skip, before, t))
        for p in fresh:  # state the step created: put back as new (zero moments, zero steps)
            for t in optimizer.state[p].values():
                if torch.is_tensor(t):
                    t.copy_(torch.where(skip, torch.zeros_like(t), t))


class Muon(torch.optim.Muon):
    """PyTorch's Muon, but orthogonalising in float32 off CUDA: torch's runs its Newton-Schulz iterations in
    bfloat16, which a CPU without native bfloat16 matmuls computes ~30x slower (4 s a step for the quick-start
    model on an AVX2 machine, against 0.1 s in float32). Matrices of one shape are orthogonalised together, as one
    batched matmul per iteration. Same algorithm, same state, same checkpoints."""

    @torch.no_grad()
    def step(self, closure=None):
        if all(p.is_cuda for group in self.param_groups for p in group["params"]):
            return super().step(closure)
        assert closure is None, "the training loop never passes a closure"
        for group in self.param_groups:
            assert group["adjust_lr_fn"] in (None, "original")
            params, grads, buffers = [], [], []
            self._init_group(group, params, grads, buffers)
            lr, momentum = group["lr"], group["momentum"]
            for buf, grad in zip(buffers, grads):
                buf.lerp_(grad, 1 - momentum)
            updates = [g.lerp(b, momentum) for g, b in zip(grads, buffers)] if group["nesterov"] else buffers
            by_shape = {}
            for i, p in enumerate(params):
                by_shape.setdefault(p.shape, []).append(i)
            for shape, indices in by_shape.items():
                stacked = torch.stack([updates[i] for i in indices])
                ortho = orthogonalize(stacked, group["ns_coefficients"], group["ns_steps"], group["eps"])
                # torch's 'original' scaling: tall matrices (more outputs than inputs) take larger steps
                scale = lr * math.sqrt(max(1, shape[0] / shape[1]))
                for i, update in zip(indices, ortho):
                    params[i].mul_(1 - lr * group["weight_decay"])
                    params[i].add_(update, alpha=-scale)


def orthogonalize(g, coefficients, steps, eps):
    """Newton-Schulz iterations towards the nearest semi-orthogonal matrix U·Vᵀ of each g = U·S·Vᵀ in a stack
    (n, rows, cols), in float32: the quintic of Jordan et al. 2024 that torch.optim.Muon runs."""
    a, b, c = coefficients
    x = g.float()
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT  # iterate on the wide side: the Gram matrix x·xᵀ is the smaller one
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


class MuonWithAdamW:
    """Muon and AdamW stepped as one optimizer: what the training loop, GradScaler and checkpoints expect of one
    (param_groups, step, zero_grad, state_dict, load_state_dict)."""

    def __init__(self, muon, adamw):
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self):
        return self.adamw.param_groups + self.muon.param_groups

    def step(self, closure=None):
        self.adamw.step()
        self.muon.step()

    def zero_grad(self, set_to_none=True):
        self.adamw.zero_grad(set_to_none=set_to_none)
        self.muon.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"adamw": self.adamw.state_dict(), "muon": self.muon.state_dict()}

    def load_state_dict(self, state):
        if set(state) != {"adamw", "muon"}:
            raise UserError("the checkpoint's optimizer state is not Muon+AdamW's: resume with --optimizer=adamw")
        self.adamw.load_state_dict(state["adamw"])
        self.muon.load_state_dict(state["muon"])
