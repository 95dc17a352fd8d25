"""Change checks: the candidate against a baseline model (--baseline) on the same images, paired by subject."""
import pytest

from audit.compare import FIGURES


@pytest.mark.check("change.{figure}")
@pytest.mark.parametrize("figure", list(FIGURES))
def test_not_worse_than_the_baseline(gate, run, figure):
    check_id = f"change.{figure}"
    if run.baseline is None:
        gate.not_applicable(check_id, "no --baseline model given")
    change = run.change_of(figure)
    if change is None:
        gate.not_applicable(check_id, f"{figure} cannot be computed on this data (e.g. no masks)")
    detail = ""
    if figure == "accuracy":
        from audit.compare import prediction_changes

        m = prediction_changes(run, run.baseline)["mcnemar"]
        detail = (f"McNemar exact p = {m['p_value']:.3g}: {m['candidate_only_correct']} slices only the candidate "
                  f"gets right, {m['baseline_only_correct']} only the baseline")
    gate.check_change(check_id, change, detail=detail)
