"""``DPConfig``: everything that determines a ``defpert dp`` result, validated in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from defpert.attacks.adaptive import AdaptiveConfig
from defpert.attacks.search import check_search
from defpert.attacks.strong import StrongConfig, check_tier
from defpert.core.engine import Schedule
from defpert.core.threat import ThreatModel, make_threat
from defpert.defenses import registry
from defpert.defenses.methods import Defense
from defpert.errors import DefpertError
from defpert.runtime.devices import check_precision
from defpert.study.options import DPOptions

# Where an attack on a proactively defended point measures its budget from: the defended
# point (man-in-the-middle, Moon et al. 2022) or also the natural image (both balls).
BUDGET_FROM = ("defended", "original")


@dataclass
class DPConfig(DPOptions):
    """Everything that determines a ``defpert dp`` result (the fields: :class:`DPOptions`)."""

    def threat(self) -> ThreatModel:
        return make_threat(self.norm, self.eps)

    @property
    def defense_radius(self) -> float:
        """The defender's budget: ``defense_eps`` where given (0 included), else the attack's."""
        return self.defense_eps if self.defense_eps is not None else self.eps

    def defense(self, method: str) -> Defense:
        return Defense(
            method=method,
            threat=make_threat(self.norm, self.defense_radius),
            steps=self.defense_steps if self.defense_steps is not None else self.steps,
            step_size=self.defense_step_size if self.defense_step_size is not None else self.step_size,
            optimizer=self.defense_optimizer, inner_steps=self.inner_steps,
            inner_restarts=self.inner_restarts, warm_start=self.warm_start,
            attack_threat=self.threat(), seed=self.seed,
        )  # fmt: skip

    def strong_config(self) -> StrongConfig:
        return StrongConfig(tier=self.strong_tier, steps=self.strong_steps,
                            restarts=self.strong_restarts, square_queries=self.square_queries,
                            batch_size=self.batch_size, search=self.search_precision)  # fmt: skip

    def adaptive_config(self) -> AdaptiveConfig:
        """The adaptive attack: as long as the strong suite, the defense unrolled for the weak
        attack's length."""
        queries = self.adaptive_square_queries
        return AdaptiveConfig(steps=self.strong_steps, unrolled_steps=self.steps,
                              unrolled_step_size=self.step_size,
                              square_queries=self.strong_config().queries if queries is None else queries,
                              restarts=1 if self.strong_tier == "quick" else 2,
                              search=self.search_precision)  # fmt: skip

    def doubtful(self, pixels: int) -> list[str]:
        """Legal settings that are almost surely a mistake, one line each (for a warning).

        A step above 2.5 eps lands on the ball's edge at every step (Madry et al.'s rule,
        2.5 eps / steps, already crosses the ball); an L2 radius beyond the diameter of the
        [0, 1] pixel cube (``sqrt(pixels)``) holds every image, so no accuracy can survive it.
        """
        notes = []
        steps = [("--step-size", self.eps, self.step_size)]
        if self.defense_eps is not None or self.defense_step_size is not None:
            steps.append(("--defense-step-size", self.defense_radius,
                          self.defense_step_size if self.defense_step_size is not None else self.step_size))  # fmt: skip
        for name, eps, size in steps:
            if size > 2.5 * eps:
                notes.append(f"{name} {size:g} is above 2.5 x eps ({2.5 * eps:g}): every step "
                             "ends on the ball's edge; did you mean a smaller step?")  # fmt: skip
        diameter = pixels**0.5
        if self.norm == "l2":
            radii = (("--eps", self.eps), ("--defense-eps", self.defense_eps))
            for name, radius in radii:
                if radius is not None and radius > diameter:
                    notes.append(f"{name} {radius:g} exceeds the images' L2 diameter ({diameter:.3g}): "
                                 "the ball holds every image of this size")  # fmt: skip
        return list(dict.fromkeys(notes))

    def beyond_training_radius(self, trained: dict[str, Any] | None) -> str | None:
        """A warning when an attack on a proactive defense's points may reach farther from the
        natural image than the radius the model was trained against (``trained``: the card's
        ``threat_trained_against``; for ``--adversarial preempt`` its eps plus its defender's
        budget), or ``None``.

        Measured on ``shipped:mnist-cnn-pgd`` (experiments/results/robustify-mnist-cnn-pgd-*):
        robustify held the bare model's accuracy under the strong suite while eps + eps_def
        stayed within the training radius, and lost it beyond.
        """
        proactive = [m for m in self.defenses if not registry.get(m).reactive]
        if not proactive or trained is None or trained.get("norm") != self.norm:
            return None
        if self.budget_from != "defended":
            return None  # the attack stays within eps of the natural image
        reach = self.eps + self.defense(proactive[0]).threat.eps
        # a preempt-trained model was attacked within eps of a defended point eps_def away
        radius = float(trained["eps"]) + float(trained.get("defense_eps") or 0.0)
        if reach <= radius * (1 + 1e-6):
            return None
        return (f"an attack from a {'/'.join(proactive)} point may end eps + eps_def = {reach:g} "
                f"from the natural image, beyond the {self.norm} {radius:g} this model was trained "
                "against, where robustify on shipped:mnist-cnn-pgd fell below the bare model under "
                "the strong suite (experiments/results/robustify-mnist-cnn-pgd-linf0.2-n200.json); a "
                "smaller --defense-eps or --budget-from original stays inside it")  # fmt: skip

    def validate(self) -> None:
        for flag, value in (("--defense-eps", self.defense_eps), ("--defense-steps", self.defense_steps),
                            ("--defense-step-size", self.defense_step_size)):  # fmt: skip
            if value is not None and not value > 0:
                raise DefpertError(f"{flag} must be above 0, got {value:g} (leave it out for the "
                                   "attack's value)")  # fmt: skip
        if not 0 <= self.seed < 2**63:
            raise DefpertError(f"--seed must lie in [0, 2^63), got {self.seed}")
        check_precision(self.precision)
        check_search(self.search_precision)
        check_tier(self.strong_tier)
        self.threat()
        Schedule(self.steps, self.step_size)
        for method in self.defenses:
            self.defense(method)
        if not self.defenses:
            raise DefpertError(f"name at least one defense: {', '.join(registry.names())}")
        for name in ("strong_limit", "strong_steps", "strong_restarts", "square_queries",
                     "batch_size"):  # fmt: skip
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DefpertError(f"--{name.replace('_', '-')} must be at least 1")
        if self.adaptive_limit < 0:
            raise DefpertError("--adaptive-limit must be 0 or more")
        if self.budget_from not in BUDGET_FROM:
            raise DefpertError(
                f"unknown --budget-from {self.budget_from!r}; choose one of: {', '.join(BUDGET_FROM)}"
            )
        defense_eps = self.defense_radius
        if self.budget_from == "original" and defense_eps > 2 * self.eps:
            raise DefpertError(
                f"--budget-from original needs a defense budget of at most 2 eps ({2 * self.eps:g}): "
                f"with {defense_eps:g} a defended point can lie farther than 2 eps from the natural "
                "image, and no point is within eps of both"
            )
        if self.adaptive_square_queries is not None and self.adaptive_square_queries < 0:
            raise DefpertError("--adaptive-square-queries must be 0 or more")
