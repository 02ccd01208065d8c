"""Yogi: Adam with an additive, sign-controlled second moment.

Zaheer, Reddi, Sachan, Kale and Kumar, "Adaptive Methods for Nonconvex Optimization", NeurIPS 2018, Algorithm 2
(https://papers.nips.cc/paper_files/paper/2018/hash/90365351ccc7437a1309dc64e4db32a3-Abstract.html):

    m_t = β1 m_{t-1} + (1 - β1) g_t
    v_t = v_{t-1} - (1 - β2) sign(v_{t-1} - g_t²) g_t²
    x_{t+1} = x_t - η m_t / (sqrt(v_t) + ε)

Adam's v_t moves a fraction (1 - β2) of the way to g_t² whatever their gap; Yogi's moves by at most (1 - β2) g_t²,
so a burst of small gradients cannot shrink the denominator (and inflate the step) as fast.

Choices where the paper's Algorithm 2 and the public implementations differ (tensorflow-addons' `tfa.optimizers.Yogi`,
TensorFlow Federated's `build_yogi`, jettify/pytorch-optimizer's `Yogi`, all of which use ε = 1e-3 and start the second
moment at 1e-6):

- v_0 = `initial_accumulator` (1e-6, as those three do), m_0 = 0 (as tensorflow-addons does; torch-optimizer also
  starts m at 1e-6). v stays >= 0 for any v_0 >= 0: where v > g², v - (1 - β2) g² > β2 g² >= 0.
- Bias correction on by default, in torch.optim.Adam's form: step lr / (1 - β1^t) and denominator
  sqrt(v_t / (1 - β2^t)) + ε. All three implementations correct the bias; without it (the paper's Algorithm 2, which
  `bias_correction=False` gives exactly) m_1 = 0.1 g_1 and v_t ≈ t (1 - β2) g² for the first ~1/(1 - β2) steps, so the
  early steps are off by large factors. tensorflow-addons adds ε before the correction, which inflates the effective
  ε by 1/sqrt(1 - β2^t) early on; we add it after, as torch.optim.Adam and torch-optimizer do.
- Weight decay is L2 (added to the gradient, as torch.optim.Adam does and torch-optimizer's Yogi does);
  `decoupled_weight_decay=True` shrinks the weights by lr * weight_decay instead (AdamW-style).

Written from the formulas above; no code was taken from those implementations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch


class Yogi(torch.optim.Optimizer):
    """Yogi (Zaheer et al., 2018) with optional Adam-style bias correction.

    State per parameter: `step` (int), `exp_avg` (m) and `exp_avg_sq` (v), so `state_dict()` round-trips through
    `torch.save` / `torch.load(weights_only=True)` and a resumed run continues identically.

    Args:
        params: parameters or parameter groups (each group may override any of the arguments below).
        lr: learning rate η; the paper suggests about 10× Adam's.
        betas: (β1, β2) decay rates of the first and second moments.
        eps: ε added to the denominator; 1e-3 in the paper and in the implementations above.
        initial_accumulator: v_0, the starting value of the second moment (≥ 0).
        weight_decay: L2 penalty added to the gradient (or decoupled, see below).
        decoupled_weight_decay: multiply the weights by (1 - lr * weight_decay) instead of adding to the gradient.
        bias_correction: divide m and v by (1 - β^t) as Adam does; False is the paper's Algorithm 2.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-3,
        initial_accumulator: float = 1e-6,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        bias_correction: bool = True,
    ):
        if lr < 0.0:
            raise ValueError(f"invalid learning rate {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}: each must be in [0, 1)")
        if eps < 0.0 or initial_accumulator < 0.0 or weight_decay < 0.0:
            raise ValueError(
                f"eps, initial_accumulator and weight_decay must be >= 0: {eps}, {initial_accumulator}, {weight_decay}"
            )
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            initial_accumulator=initial_accumulator,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            bias_correction=bias_correction,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One update of every parameter that has a gradient; `closure` re-evaluates the loss (with grad enabled)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("Yogi does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.full_like(
                        p, group["initial_accumulator"], memory_format=torch.preserve_format
                    )
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                t = state["step"]

                if weight_decay != 0.0:
                    if group["decoupled_weight_decay"]:
                        p.mul_(1.0 - lr * weight_decay)
                    else:
                        grad = grad.add(p, alpha=weight_decay)

                exp_avg.lerp_(grad, 1.0 - beta1)  # m = β1 m + (1 - β1) g
                grad_sq = grad * grad
                # v = v - (1 - β2) sign(v - g²) g²; sign(0) = 0 leaves v unchanged where v == g² exactly
                exp_avg_sq.addcmul_(torch.sign(exp_avg_sq - grad_sq), grad_sq, value=-(1.0 - beta2))

                if group["bias_correction"]:
                    step_size = lr / (1.0 - beta1**t)
                    denom = (exp_avg_sq.sqrt() / math.sqrt(1.0 - beta2**t)).add_(eps)
                else:
                    step_size = lr
                    denom = exp_avg_sq.sqrt().add_(eps)
                p.addcdiv_(exp_avg, denom, value=-step_size)
        return loss
