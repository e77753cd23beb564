"""The denoising arithmetic the guided sampler steps with: diffusers' "leading" timesteps, the
image-guidance weight schedule γ_i, the DDPM posterior and one step of DDPM, DDIM or
DPM-Solver++(2M) given x̂0. Pure functions of floats and tensors, no model."""
from __future__ import annotations

import math
from typing import Optional

import torch


def leading_timesteps(num_train_timesteps: int, num_steps: int, steps_offset: int) -> list[int]:
    """Diffusers' "leading" spacing: 976, 951, ..., 1 for 1000/40/offset 1."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps={num_steps}: must be in [1, {num_train_timesteps}]")
    ratio = num_train_timesteps // num_steps
    return [i * ratio + steps_offset for i in reversed(range(num_steps))]


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def gamma_schedule(num_steps: int, strength: float) -> list[float]:
    """γ_i = sigmoid(s − i) for step index i (not timestep); s = ±inf gives all 1 / all 0."""
    return [_sigmoid(strength - i) for i in range(num_steps)]


def posterior_coefficients(abar_t: float, abar_prev: float) -> tuple[float, float, float]:
    """DDPM posterior q(x_t' | x_t, x0) = N(c0·x0 + ct·x_t, σ²) with fixed_small variance."""
    alpha_t = abar_t / abar_prev
    beta_t = 1.0 - alpha_t
    c0 = math.sqrt(abar_prev) * beta_t / (1.0 - abar_t)
    ct = math.sqrt(alpha_t) * (1.0 - abar_prev) / (1.0 - abar_t)
    var = (1.0 - abar_prev) / (1.0 - abar_t) * beta_t
    return c0, ct, math.sqrt(max(var, 0.0))


class Solver:
    """One denoising step x_t -> x_t' of the chosen sampler, given x̂0 (and, stochastic ones, noise).

    ``ddpm``: the DDPM posterior (fixed_small variance). ``ddim``: x_t' = √ᾱ' x̂0 + √(1 − ᾱ' − σ²) ε̂
    + σ·z with σ = η √((1 − ᾱ')/(1 − ᾱ)) √(1 − ᾱ/ᾱ') and ε̂ the noise x̂0 implies. ``dpmpp_2m``:
    DPM-Solver++ in data prediction, x_t' = (σ'/σ) x_t − α' (e^{−h} − 1) D with h = λ' − λ,
    λ = log(α/σ), D = x̂0 at the first and the last step and (1 + 1/2r) x̂0 − (1/2r) x̂0_prev
    otherwise (r = h_prev / h). The last step (ᾱ' = 1) lands on x̂0 (DDIM: √ᾱ'·x̂0, DPM++: D = x̂0).

    The sample keeps a history (``step``); a trajectory whose x0 is fixed (the guide's z_g) has
    D = x0 whatever the order (``step_fixed``).
    """

    def __init__(self, kind: str, eta: float = 0.0):
        self.kind, self.eta = kind, eta
        self._x0_prev: Optional[torch.Tensor] = None
        self._h_prev: Optional[float] = None

    @property
    def stochastic(self) -> bool:
        return self.kind == "ddpm" or (self.kind == "ddim" and self.eta > 0)

    def step(self, x: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, abar_t: float, abar_prev: float,
             fixed: bool = False) -> torch.Tensor:
        if self.kind == "ddpm":
            c0, ct, sigma = posterior_coefficients(abar_t, abar_prev)
            return c0 * x0 + ct * x + sigma * noise
        if self.kind == "ddim":
            sigma = self.eta * math.sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))
            eps = (x - math.sqrt(abar_t) * x0) / math.sqrt(1 - abar_t)
            return (math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma ** 2, 0.0)) * eps
                    + sigma * noise)
        # dpmpp_2m
        if abar_prev >= 1.0:                      # the last step: σ' = 0, first order lands on x̂0
            if not fixed:
                self._x0_prev, self._h_prev = None, None
            return x0
        sigma_t, sigma_p, alpha_p = math.sqrt(1 - abar_t), math.sqrt(1 - abar_prev), math.sqrt(abar_prev)
        h = math.log(alpha_p / sigma_p) - math.log(math.sqrt(abar_t) / sigma_t)
        d = x0
        if not fixed:
            if self._x0_prev is not None:
                r = self._h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * self._x0_prev
            self._x0_prev, self._h_prev = x0, h
        return (sigma_p / sigma_t) * x - alpha_p * math.expm1(-h) * d
