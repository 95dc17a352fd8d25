"""Performance checks on the evaluated split (subject-level bootstrap CIs are in audit.json)."""
import pytest

from model.classes import CLASSES


def _ci(run, key: str) -> str:
    ci = run.performance.get("ci") or {}
    interval = ci.get(key)
    if not interval:
        return f"95% CI not estimable: {ci.get('reason') or 'not computed'}"
    lo, hi = interval
    return f"95% CI {lo:.3f}-{hi:.3f}, {run.performance['ci_method']}"


@pytest.mark.check("performance.accuracy")
def test_accuracy(gate, run):
    gate.check("performance.accuracy", run.performance["accuracy"], detail=_ci(run, "accuracy"))


@pytest.mark.check("performance.balanced_accuracy")
def test_balanced_accuracy(gate, run):
    gate.check("performance.balanced_accuracy", run.performance["balanced_accuracy"],
               detail=_ci(run, "balanced_accuracy"))


@pytest.mark.check("performance.macro_f1")
def test_macro_f1(gate, run):
    gate.check("performance.macro_f1", run.performance["macro_f1"], detail=_ci(run, "macro_f1"))


@pytest.mark.check("performance.per_class_recall")
def test_worst_class_recall(gate, run):
    per_class = run.performance["per_class"]
    estimable = {c: per_class[c]["recall"] for c in CLASSES
                 if per_class[c]["estimable"] and per_class[c]["recall"] is not None}
    if not estimable:
        gate.not_applicable("performance.per_class_recall", "no class has 5 or more subjects in the evaluated "
                                                            "split: per-class recall is not estimable")
    worst = min(estimable, key=estimable.get)
    gate.check("performance.per_class_recall", estimable[worst], detail=f"worst class {worst}")


@pytest.mark.check("performance.ece")
def test_calibration(gate, run):
    gate.check("performance.ece", run.performance["ece"])
