"""The optimizer and the learning-rate schedule of a training run.

optimizer='adamw' is nanoGPT's: one AdamW, weight decay on matrices and embeddings only (GPT.configure_optimizers).
optimizer='muon' is the modern recipe's: PyTorch's Muon (Jordan et al. 2024) for the 2-D weight matrices inside the
transformer blocks, AdamW for everything else (embeddings, LM head, norm gains, biases), which Muon is not made for.
Both follow the same schedule, each from its own peak learning rate (learning_rate, muon_lr); under Muon the
token and value embeddings and the learned scalars (x0 shares, residual and backout scales) may have their own AdamW
peaks (embedding_lr, scalar_lr), and Muon's momentum may warm up (muon_momentum_warmup).

lr_rule='transfer' scales those peaks from the shape they were tuned at (lr_ref_width, lr_ref_batch_tokens,
lr_ref_iters) to the run's shape, so a preset's rates carry over when its width, batch or length changes
(lr_rule_factors says how; docs/concepts/modern-recipe.md why).

lr_schedule='cosine' is nanoGPT's: linear warmup, cosine decay to min_lr at lr_decay_iters. 'wsd' (warmup, stable,
decay) holds the peak and decays linearly to min_lr over the last wsd_decay_frac of lr_decay_iters (Hägele et al.
2024); it lets a short run spend longer at the peak.
"""

import functools
import math

import torch

from nanogpt.errors import UserError
from nanogpt.model import adamw

OPTIMIZERS = ("adamw", "muon")
LR_SCHEDULES = ("cosine", "wsd")
# the optimal peak falls as a power of the run's length in tokens (Bjorck et al. 2024); a third is a round value in
# the range such fits report, not fitted here
HORIZON_POWER = -1 / 3


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
    """Set every group's learning rate for iteration it; returns the one the log shows: learning_rate's schedule,
    times the learning-rate rule's factor where it is on (the rate the norm gains train at)."""
    lr = get_lr(it, cfg)
    for group in getattr(optimizer, "adamw", optimizer).param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    if isinstance(optimizer, MuonWithAdamW):
        muon_lr = get_lr(it, cfg, cfg.muon_lr)
        for group in optimizer.muon.param_groups:
            group["lr"] = muon_lr * group.get("lr_scale", 1.0)
            group["momentum"] = muon_momentum(it, cfg)
    return lr * lr_rule_factors(cfg)["gains"] if cfg.lr_rule != "off" else lr


def muon_momentum(it, cfg):
    """Muon's momentum at iteration it: from 0.85 up to muon_momentum, linearly over muon_momentum_warmup steps.
    Early gradients change fast; a shorter memory follows them (Jordan et al. 2024's speedrun schedule)."""
    if it >= cfg.muon_momentum_warmup:
        return cfg.muon_momentum
    start = min(0.85, cfg.muon_momentum)
    return start + (cfg.muon_momentum - start) * it / cfg.muon_momentum_warmup


def build_optimizer(model, cfg, device_type, sharded=False):
    """The optimizer cfg.optimizer names, over model's parameters. sharded: the model is under FSDP."""
    optimizer = build_optimizer_at_tuned_rates(model, cfg, device_type, sharded)
    if cfg.lr_rule != "off":
        apply_lr_rule(optimizer, model, cfg)
    return optimizer


def build_optimizer_at_tuned_rates(model, cfg, device_type, sharded):
    """The optimizer, every group at the peak its setting names (before the learning-rate rule)."""
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "adamw":
        return model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, betas, device_type)
    if sharded:
        # Muon orthogonalises each whole matrix; an FSDP rank holds only a slice of it
        raise UserError("optimizer='muon' does not work with parallelism='fsdp' yet: use --parallelism=ddp")
    hidden = [p for p in model.transformer.h.parameters() if p.dim() == 2]
    in_muon = {id(p) for p in hidden}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in in_muon]
    muon = Muon(hidden, lr=cfg.muon_lr, momentum=cfg.muon_momentum, weight_decay=cfg.muon_weight_decay,
                orthogonalizer=cfg.muon_orthogonalizer, neuron_norm=cfg.muon_neuron_norm,
                cautious_weight_decay=cfg.muon_cautious_weight_decay)
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
    """Move the parameters in ids out of their groups into groups of their own (same settings), their rate
    scaled by lr_scale (on top of any scale the group had)."""
    if lr_scale == 1.0:
        return
    for group in list(optimizer.param_groups):
        moved = [p for p in group["params"] if id(p) in ids]
        if moved:
            group["params"] = [p for p in group["params"] if id(p) not in ids]
            optimizer.param_groups.append({**group, "params": moved, "lr": group["lr"] * lr_scale,
                                           "lr_scale": group.get("lr_scale", 1.0) * lr_scale})
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]


def lr_rule_factors(cfg):
    """What lr_rule='transfer' multiplies each kind of parameter's tuned peak by, at this run's shape:
    {'matrices', 'head', 'embeddings', 'gains'} -> factor (all 1.0 when the rule is off or the shape is the
    reference one). 'matrices' are the blocks' 2-D weights (Muon's under optimizer='muon'); 'gains' are norm gains,
    biases and the x0 shares.

    Batch and length (every kind): the peak grows with the square root of the tokens per step, the rule for Adam
    at equal tokens (Malladi et al. 2022, *On the SDEs and Scaling Rules for Adaptive Gradient Algorithms*), which
    Muon's normalised update shares; and falls with the run's total tokens to the power HORIZON_POWER. Doubling
    the batch at equal steps doubles both: x sqrt(2) x 2^(-1/3) = 1.12.
    Width (μP for Adam, Yang et al. 2022): an AdamW-trained matrix that reads the residual stream (the head, and
    the blocks' matrices under optimizer='adamw') takes a peak proportional to 1/width; embeddings and gains keep
    theirs. Muon needs no width factor: its update has spectral norm ~1 (times torch's sqrt(rows/cols) for tall
    matrices), which is the width-free step the spectral condition asks for (Yang, Simon & Bernstein 2023)."""
    if cfg.lr_rule == "off":
        return dict.fromkeys(("matrices", "head", "embeddings", "gains"), 1.0)
    step_tokens = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
    ref_tokens = cfg.lr_ref_batch_tokens or step_tokens
    batch = step_tokens / ref_tokens
    horizon = (cfg.max_iters * step_tokens) / ((cfg.lr_ref_iters or cfg.max_iters) * ref_tokens)
    width = cfg.n_embd / (cfg.lr_ref_width or cfg.n_embd)
    common = math.sqrt(batch) * horizon ** HORIZON_POWER
    return {"matrices": common if cfg.optimizer == "muon" else common / width, "head": common / width,
            "embeddings": common, "gains": common}


def parameter_kinds(model):
    """id(parameter) -> its kind in lr_rule_factors. A tied token embedding is the head."""
    kinds = {id(p): "gains" for p in model.parameters()}
    kinds.update({id(p): "matrices" for p in model.transformer.h.parameters() if p.dim() == 2})
    embeddings = [model.transformer.wte.weight, *model.value_embeds.parameters()]
    if "wpe" in model.transformer:
        embeddings.append(model.transformer.wpe.weight)
    kinds.update({id(p): "embeddings" for p in embeddings})
    kinds[id(model.lm_head.weight)] = "head"
    return kinds


def apply_lr_rule(optimizer, model, cfg):
    """Scale each parameter's peak by its kind's lr_rule_factors (splitting groups where kinds share one)."""
    factors = lr_rule_factors(cfg)
    kinds = parameter_kinds(model)
    parts = (optimizer.adamw, optimizer.muon) if isinstance(optimizer, MuonWithAdamW) else (optimizer,)
    for part in parts:
        for kind, factor in factors.items():
            split_group(part, {i for i, k in kinds.items() if k == kind}, factor)


def describe_lr_rule(optimizer, model, cfg):
    """One line for the log: the rule's shapes and the peak rate each kind of parameter got."""
    kinds = parameter_kinds(model)
    muon = optimizer.muon.param_groups if isinstance(optimizer, MuonWithAdamW) else []
    muon_ids = {id(p) for group in muon for p in group["params"]}
    rates = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            base = cfg.muon_lr if id(p) in muon_ids else cfg.learning_rate
            rates.setdefault(kinds[id(p)], set()).add(base * group.get("lr_scale", 1.0))
    tokens = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
    shape = (f"width {cfg.n_embd} from {cfg.lr_ref_width or cfg.n_embd}, {tokens:,} tokens a step from "
             f"{cfg.lr_ref_batch_tokens or tokens:,}, {cfg.max_iters} steps from {cfg.lr_ref_iters or cfg.max_iters}")
    chosen = ", ".join(f"{kind}{' (Muon)' if kind == 'matrices' and muon_ids else ''} "
                       + "/".join(f"{r:.3g}" for r in sorted(rates[kind]))
                       for kind in ("matrices", "head", "embeddings", "gains") if kind in rates)
    return f"learning-rate rule '{cfg.lr_rule}' ({shape}): peak rates {chosen}"


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
    batched matmul per iteration. Same algorithm, same state, same checkpoints as torch's by default.

    Three variants, each off by default (then, on CUDA, torch's own step runs):
    - orthogonalizer='polar_express': each iteration its own quintic, the best one for where the singular values
      can lie by then (polar_express_coefficients), instead of one fixed quintic for every iteration;
    - neuron_norm: NorMuon (Li et al. 2025, *NorMuon: Making Muon more efficient and scalable*), the
      orthogonalised update's rows (output neurons) divided by a running RMS of each row, then scaled back to the
      update's norm, so no neuron steps much more than the others;
    - cautious_weight_decay: decay only the entries that the update also moves towards zero (Chen et al. 2025,
      *Cautious Weight Decay*), so decay never fights the gradient's direction."""

    def __init__(self, params, orthogonalizer="newton_schulz", neuron_norm=False, neuron_beta2=0.95,
                 cautious_weight_decay=False, **kwargs):
        super().__init__(params, **kwargs)
        self.orthogonalizer, self.neuron_norm, self.neuron_beta2 = orthogonalizer, neuron_norm, neuron_beta2
        self.cautious_weight_decay = cautious_weight_decay

    def variants_on(self):
        return self.orthogonalizer != "newton_schulz" or self.neuron_norm or self.cautious_weight_decay

    @torch.no_grad()
    def step(self, closure=None):
        on_cuda = all(p.is_cuda for group in self.param_groups for p in group["params"])
        if on_cuda and not self.variants_on():
            return super().step(closure)
        assert closure is None, "the training loop never passes a closure"
        for group in self.param_groups:
            assert group["adjust_lr_fn"] in (None, "original")
            params, grads, buffers = [], [], []
            self._init_group(group, params, grads, buffers)
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
            for buf, grad in zip(buffers, grads):
                buf.lerp_(grad, 1 - momentum)
            updates = [g.lerp(b, momentum) for g, b in zip(grads, buffers)] if group["nesterov"] else buffers
            if self.orthogonalizer == "polar_express":
                coefficients = polar_express_coefficients(group["ns_steps"])
            else:
                coefficients = [group["ns_coefficients"]] * group["ns_steps"]
            by_shape = {}
            for i, p in enumerate(params):
                by_shape.setdefault(p.shape, []).append(i)
            for shape, indices in by_shape.items():
                stacked = torch.stack([updates[i] for i in indices])
                ortho = orthogonalize(stacked, coefficients, group["eps"])
                if self.neuron_norm:
                    ortho = self.normalize_neurons(ortho, [params[i] for i in indices], group["eps"])
                # torch's 'original' scaling: tall matrices (more outputs than inputs) take larger steps
                scale = lr * math.sqrt(max(1, shape[0] / shape[1]))
                for i, update in zip(indices, ortho):
                    update = update.to(params[i].dtype)
                    if self.cautious_weight_decay:  # where the step shrinks the weight, decay shrinks it more
                        agrees = (params[i] * update > 0).to(update.dtype)
                        params[i].addcmul_(params[i], agrees, value=-lr * decay)
                    else:
                        params[i].mul_(1 - lr * decay)
                    params[i].add_(update, alpha=-scale)

    def normalize_neurons(self, ortho, params, eps):
        """NorMuon's step: each row of each update over the running RMS of that row's updates (a second moment
        per output neuron, kept in the optimizer state), the whole update scaled back to its norm before, so the
        learning rate keeps its meaning; only how the step is shared between neurons changes."""
        moments = []
        for p in params:
            state = self.state[p]
            if "neuron_second_moment" not in state:
                state["neuron_second_moment"] = torch.zeros(p.shape[0], device=p.device, dtype=torch.float32)
            moments.append(state["neuron_second_moment"])
        second = torch.stack(moments)  # (n, rows)
        second.lerp_(ortho.square().mean(dim=-1), 1 - self.neuron_beta2)
        for moment, new in zip(moments, second):
            moment.copy_(new)
        normed = ortho / (second.sqrt().unsqueeze(-1) + eps)
        norms = ortho.norm(dim=(-2, -1), keepdim=True), normed.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
        return normed * (norms[0] / norms[1])


def orthogonalize(g, coefficients, eps):
    """Odd quintic iterations x <- a·x + b·(x·xᵀ)·x + c·(x·xᵀ)²·x towards the nearest semi-orthogonal matrix U·Vᵀ
    of each g = U·S·Vᵀ in a stack (n, rows, cols), in float32; coefficients: one (a, b, c) per iteration (Jordan et
    al. 2024's fixed quintic, the one torch.optim.Muon runs, or polar_express_coefficients)."""
    x = g.float()
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT  # iterate on the wide side: the Gram matrix x·xᵀ is the smaller one
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for a, b, c in coefficients:
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


@functools.cache
def polar_express_coefficients(steps, smallest=1e-3, safety=1.01):
    """Polar Express (Amsel, Persson, Musco & Gower 2025, *The Polar Express: Optimal Matrix Sign Methods and
    Their Application to the Muon Algorithm*): one odd quintic per iteration, each the minimax one for where the
    singular values lie by then. After the Frobenius normalisation they lie in [smallest, 1]; the quintic that
    keeps p(x) closest to 1 over [lo, hi] maps that interval onto [1 - E, 1 + E] (its error E), which is the next
    iteration's interval, and choosing each iteration's best this way (greedily) is the best composition overall,
    the paper's result. Every quintic but the last reads x/safety, so rounding that puts a singular value slightly
    above the interval cannot send it far. Returns ((a, b, c), ...), one per iteration."""
    lo, hi = smallest, 1.0
    coefficients = []
    for i in range(steps):
        a, b, c = minimax_odd_quintic(lo, hi)
        if i < steps - 1:
            a, b, c = a / safety, b / safety ** 3, c / safety ** 5
        coefficients.append((a, b, c))
        # p's extremes on [lo, hi]: the ends and where p' = a + 3b·x² + 5c·x⁴ vanishes inside
        points = [lo, hi] + [math.sqrt(y) for y in quadratic_roots(5 * c, 3 * b, a) if lo ** 2 < y < hi ** 2]
        values = [a * x + b * x ** 3 + c * x ** 5 for x in points]
        lo, hi = min(values), max(values)
    return tuple(coefficients)


def minimax_odd_quintic(lo, hi, iterations=50):
    """(a, b, c) of p(x) = a·x + b·x³ + c·x⁵ that minimise max |1 - p(x)| over [lo, hi], by Remez exchange: the
    best p touches 1 - E at lo, 1 + E and 1 - E at its two turning points inside, and 1 + E at hi; solve for the
    p and E through four such points, move the middle two to the new p's turning points, repeat."""
    points = [lo, lo + (hi - lo) / 3, lo + 2 * (hi - lo) / 3, hi]
    for _ in range(iterations):
        system = torch.tensor([[x, x ** 3, x ** 5, (-1) ** i] for i, x in enumerate(points)], dtype=torch.float64)
        a, b, c, _error = torch.linalg.solve(system, torch.ones(4, dtype=torch.float64)).tolist()
        turning = [math.sqrt(y) for y in quadratic_roots(5 * c, 3 * b, a) if lo ** 2 < y < hi ** 2]
        if len(turning) != 2:
            break
        moved = [lo, *turning, hi]
        if max(abs(p - q) for p, q in zip(moved, points)) < 1e-14:
            break
        points = moved
    return a, b, c


def quadratic_roots(a, b, c):
    """The real roots of a·y² + b·y + c, sorted."""
    disc = b * b - 4 * a * c
    if a == 0 or disc < 0:
        return []
    return sorted(((-b - math.sqrt(disc)) / (2 * a), (-b + math.sqrt(disc)) / (2 * a)))


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
