"""Paired comparisons of per-query metrics (``evaluation.significance``) and the commands that
report them: ``erank-fast eval``'s gains over the first stage and ``erank-fast compare``."""

from __future__ import annotations

import itertools
import json
import random
import statistics

import pytest

stats = pytest.importorskip("scipy.stats")

from erank_fast import cli  # noqa: E402
from erank_fast.evaluation.significance import compare, per_query, standard_error  # noqa: E402
from tests.helpers import load_script  # noqa: E402


def values(seed: int, n: int, scale: float = 1.0) -> dict[str, float]:
    rng = random.Random(seed)
    return {f"q{i}": rng.uniform(0, scale) for i in range(n)}


def test_standard_error_is_the_sample_deviation_over_root_n():
    xs = list(values(1, 23).values())
    assert standard_error(xs) == pytest.approx(statistics.stdev(xs) / len(xs) ** 0.5, rel=1e-12)
    assert standard_error([0.3]) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        standard_error([])


def test_p_values_exact_randomisation_and_paired_t():
    """n = 9 ≤ 13: scipy enumerates every sign pattern, so the randomisation p is the exact
    share of patterns whose mean difference is at least as far from 0 as the observed one; the
    t-test's p and interval are Student's t with n − 1 degrees of freedom."""
    a, b = values(2, 9), values(3, 9)
    d = [b[q] - a[q] for q in sorted(a)]
    observed = abs(sum(d) / len(d))
    extreme = sum(abs(sum(s * x for s, x in zip(signs, d)) / len(d)) >= observed * (1 - 1e-9)
                  for signs in itertools.product((1, -1), repeat=len(d)))
    result = compare(a, b)
    assert result.p_randomisation == pytest.approx(extreme / 2 ** len(d), abs=1e-12)
    mean, se = sum(d) / len(d), statistics.stdev(d) / len(d) ** 0.5
    assert result.difference == pytest.approx(mean, abs=1e-12)
    assert result.p_value == pytest.approx(2 * stats.t.sf(abs(mean / se), len(d) - 1), rel=1e-9)
    half = stats.t.ppf(0.975, len(d) - 1) * se
    assert (result.ci_low, result.ci_high) == pytest.approx((mean - half, mean + half), rel=1e-9)
    # one test: the interval leaves out 0 exactly when p < 0.05
    assert (result.ci_low > 0 or result.ci_high < 0) == (result.p_value < 0.05)


def test_a_clear_gain_and_pure_noise():
    a = values(4, 30)
    rng = random.Random(5)
    gain = {q: v + 0.1 + rng.gauss(0, 0.02) for q, v in a.items()}
    result = compare(a, gain)
    assert result.queries == 30 and 0.0 < result.ci_low < 0.1 < result.ci_high
    assert result.p_value < 0.001 and result.p_randomisation < 0.001
    # differences that cancel exactly: mean 0, every sign pattern as extreme as the data
    noise = {q: v + (0.05 if i % 2 else -0.05) for i, (q, v) in enumerate(a.items())}
    result = compare(a, noise)
    assert result.difference == pytest.approx(0.0, abs=1e-12)
    assert result.p_value == pytest.approx(1.0, abs=1e-9) and result.p_randomisation > 0.9
    assert result.ci_low < 0.0 < result.ci_high


def test_a_constant_difference_has_no_spread():
    a = {f"q{i}": i / 16 for i in range(12)}  # sums exact in binary: the differences all 0.25
    result = compare(a, {q: v + 0.25 for q, v in a.items()})
    assert result.ci_low == result.ci_high == pytest.approx(0.25, abs=1e-12)
    assert result.p_value == 0.0 and result.p_randomisation == pytest.approx(2 / 2 ** 12)
    same = compare(a, dict(a))
    assert (same.difference, same.ci_low, same.ci_high, same.p_value,
            same.p_randomisation) == (0.0, 0.0, 0.0, 1.0, 1.0)


def test_pairs_by_query_id_is_seeded_and_refuses_what_it_cannot_pair():
    a = values(7, 20)
    b = dict(reversed(list(values(8, 25).items())))  # other order, five extra queries
    result = compare(a, b)
    assert result.queries == 20
    assert result.mean_a == pytest.approx(statistics.fmean(a.values()))
    assert result.mean_b == pytest.approx(statistics.fmean(b[q] for q in a))
    assert compare(a, b) == result
    with pytest.raises(ValueError, match="at least 2 queries in common, got 1"):
        compare({"x": 0.1, "y": 0.2}, {"y": 0.3, "z": 0.4})
    with pytest.raises(ValueError, match="confidence"):
        compare(a, b, confidence=95)


def eval_result(seed: int, qids, shift: float = 0.0) -> dict:
    rng = random.Random(seed)
    rows = {}
    for q in qids:
        base = rng.uniform(0.2, 0.6)
        rows[q] = {name: {"ndcg@10": min(1.0, base + gain + shift + rng.gauss(0, 0.03)),
                          "mrr@10": base}
                   for name, gain in (("first_stage", 0.0), ("reranked", 0.1), ("hybrid", 0.12),
                                      ("hybrid_order", 0.08))}
    return {"per_query": rows, "queries_evaluated": len(rows)}


def test_compare_command_pairs_two_evaluations(tmp_path, capsys):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(eval_result(1, [f"q{i}" for i in range(20)])))
    new.write_text(json.dumps(eval_result(2, [f"q{i}" for i in range(5, 30)], shift=0.05)))
    assert cli.main(["compare", str(old), str(new)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"ndcg@10, {new} against {old}, paired over 15 queries (of 20 and 25)")
    assert [line.split()[0] for line in out[1:]] == ["first_stage", "reranked", "hybrid",
                                                     "hybrid_order"]
    assert cli.main(["compare", str(old), str(new), "--json", "--metric", "mrr@10"]) == 0
    rows = json.loads(capsys.readouterr().out)
    expected = compare(per_query(json.loads(old.read_text()), "hybrid", "mrr@10"),
                       per_query(json.loads(new.read_text()), "hybrid", "mrr@10"))
    assert rows["hybrid"] == expected.as_dict() and rows["hybrid"]["queries"] == 15


def test_compare_command_one_evaluation_against_its_first_stage(tmp_path, capsys):
    path = tmp_path / "result.json"
    path.write_text(json.dumps(eval_result(3, [f"q{i}" for i in range(25)])))
    assert cli.main(["compare", str(path), "--confidence", "0.9"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "against the first stage, paired over 25 queries" in out[0] and "90% CI" in out[0]
    assert [line.split()[0] for line in out[1:]] == ["reranked", "hybrid", "hybrid_order"]
    # a gain of ~0.1 on every query: as small a p as 9,999 random sign patterns can show
    assert all(float(line.rsplit("randomisation ", 1)[1].rstrip(")")) < 0.001
               for line in out[1:])
    assert cli.main(["compare", str(path), "--baseline", "hybrid"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "against hybrid, paired over 25 queries" in out[0]
    assert [line.split()[0] for line in out[1:]] == ["first_stage", "reranked", "hybrid_order"]


@pytest.mark.parametrize("content, message", [
    (None, "No such file"),
    ("{not json", "not JSON"),
    ('{"reranked": {"ndcg@10": 0.5}}', "not an evaluation result with per-query values"),
])
def test_compare_command_bad_input_is_one_line_and_status_2(tmp_path, capsys, content, message):
    path = tmp_path / "result.json"
    if content is not None:
        path.write_text(content)
    assert cli.main(["compare", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("erank-fast compare") and message in err and "Traceback" not in err
    assert cli.main(["compare", str(path), str(path), str(path)]) == 2
    assert "one or two results, got 3" in capsys.readouterr().err


def test_eval_command_reports_the_gain_with_its_interval(tiny_qwen3, tmp_path, capsys):
    model, tok = tiny_qwen3
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    data, qrels = tmp_path / "data.jsonl", tmp_path / "data.qrels"
    with data.open("w") as f:
        for q in range(6):
            cands = [{"docid": f"d{q}-{i}", "text": f"passage {i} about topic {q}",
                      "score": 10.0 - i} for i in range(3)]
            f.write(json.dumps({"qid": f"q{q}", "query": f"topic {q}", "candidates": cands})
                    + "\n")
    qrels.write_text("".join(f"q{q} 0 d{q}-{q % 3} 1\n" for q in range(6)))
    out = tmp_path / "result.json"
    assert cli.main(["eval", "--model", str(tmp_path / "m"), "--data", str(data), "--qrels",
                     str(qrels), "--skip-queries", "1", "--queries", "4", "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert "ndcg@10 against the first stage over 4 queries" in report
    result = json.loads(out.read_text())
    assert sorted(result["per_query"]) == ["q1", "q2", "q3", "q4"]
    for name in ("reranked", "hybrid", "hybrid_order"):
        expected = compare(per_query(result, "first_stage", "ndcg@10"),
                           per_query(result, name, "ndcg@10"))
        assert result["against_first_stage"][name] == expected.as_dict()
    assert cli.main(["eval", "--model", str(tmp_path / "m"), "--data", str(data), "--qrels",
                     str(qrels), "--skip-queries", "-1"]) == 2
    assert "--skip-queries must be at least 0" in capsys.readouterr().err
    assert cli.main(["eval", "--model", str(tmp_path / "m"), "--data", str(data), "--qrels",
                     str(qrels), "--hybrid", "1.5"]) == 2
    assert "hybrid_alpha must be a number in [0, 1], got 1.5" in capsys.readouterr().err


def test_significance_table_script(tmp_path, capsys):
    """train/significance_table.py: per set, each model against the first stage, the last
    against the earlier ones, the last one's hybrid against its reranking."""
    module = load_script("significance_table")
    qids = [f"q{i}" for i in range(15)]
    paths = {}
    for name, seed, shift in (("old", 1, 0.0), ("new", 2, 0.05)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(eval_result(seed, qids, shift)))
    out = tmp_path / "table.json"
    assert module.main(["--set", "DL", f"old={paths['old']}", f"new={paths['new']}",
                        "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    labels = [line.split(" | ")[1] for line in lines[2:]]
    assert labels == ["old reranked − first stage", "old hybrid − first stage",
                      "new reranked − first stage", "new hybrid − first stage",
                      "new − old, reranked", "new − old, hybrid", "new hybrid − new reranked"]
    rows = json.loads(out.read_text())["DL"]
    old, new = (json.loads(paths[n].read_text()) for n in ("old", "new"))
    expected = compare(per_query(old, "hybrid", "ndcg@10"), per_query(new, "hybrid", "ndcg@10"))
    assert {k: v for k, v in rows[5].items() if k != "comparison"} == expected.as_dict()
    with pytest.raises(SystemExit):
        module.main(["--set", "DL", "no-equals-sign"])


def test_learning_curves_keep_per_query_values_and_compare_with_the_start():
    """train/curve.py: a checkpoint's held-out results keep each query's nDCG@10, and each
    checkpoint is compared with the start adapter query by query."""
    curve = load_script("curve")
    qids = [f"q{i}" for i in range(12)]
    start, later = eval_result(1, qids), eval_result(2, qids, shift=0.05)
    for result in (start, later):
        result["docs_per_second"] = 3.0
    start_point = {"dl21_heldout": curve.summary(start), "dtype": "float32"}
    later_point = {"dl21_heldout": curve.summary(later), "dtype": "float32"}
    kept = start_point["dl21_heldout"]["per_query"]
    assert kept["q3"]["hybrid"] == start["per_query"]["q3"]["hybrid"]["ndcg@10"]
    assert "per_query" not in curve.means(start_point)["dl21_heldout"]
    paired = curve.against(start_point, later_point)
    expected = compare(per_query(start, "reranked", "ndcg@10"),
                       per_query(later, "reranked", "ndcg@10"))
    assert paired["dl21_heldout"]["reranked"] == expected
    assert set(paired["dl21_heldout"]) == {"reranked", "hybrid"}
    # results written before per-query values were kept: nothing to pair
    old = {"dl21_heldout": {k: v for k, v in start_point["dl21_heldout"].items()
                            if k != "per_query"}}
    assert curve.against(old, later_point) == {}


def test_learning_curves_compare_with_a_chosen_checkpoint(tmp_path):
    """train/curve.py --against: a run's checkpoint (its last step unless one is named), from
    these results or another results file, is the reference; what is missing is named."""
    curve = load_script("curve")
    qids = [f"q{i}" for i in range(12)]
    points = {}
    for seed, shift in ((1, 0.0), (2, 0.03), (3, 0.06)):
        result = eval_result(seed, qids, shift=shift)
        result["docs_per_second"] = 3.0
        points[seed] = {"dl21_heldout": curve.summary(result)}
    results = {"runs": {"control": {"16": points[1], "64": points[2]}, "v19": {"67": points[3]}}}
    assert curve.reference_point(results, "control") == ("control", "64", points[2])
    assert curve.reference_point(results, "control@16") == ("control", "16", points[1])
    other = tmp_path / "v13_curve.json"
    other.write_text(json.dumps({"runs": {"v13": {"200": points[1]}}}))
    run, step, point = curve.reference_point(results, f"{other}:v13")
    assert (run, step) == ("v13", "200")
    paired = curve.against(point, results["runs"]["v19"]["67"])
    reranked = {n: {q: v["reranked"] for q, v in p["dl21_heldout"]["per_query"].items()}
                for n, p in points.items()}
    want = compare(reranked[1], reranked[3])
    assert paired["dl21_heldout"]["reranked"] == want
    for spec, message in (("nope", "no run 'nope'.*control, v19"), ("control@32", "steps: 16, 64"),
                          (f"{tmp_path / 'missing.json'}:v13", "no results file")):
        with pytest.raises(SystemExit, match=message):
            curve.reference_point(results, spec)
    # checked before any scoring: a run this call scores is known by name, its steps later
    curve.check_against(results, ["v20"], "v20@100")
    curve.check_against(results, [], "control@16")
    curve.check_against(results, [], f"{other}:v13@200")
    for spec, message in (("v21", "no run 'v21'.*control, v19, v20"),
                          (f"{other}:v13@100", "steps: 200"),
                          (f"{tmp_path / 'missing.json'}:v13", "no results file")):
        with pytest.raises(SystemExit, match=message):
            curve.check_against(results, ["v20"], spec)


def test_learning_curves_put_runs_of_different_group_sizes_on_one_axis():
    """train/curve.py: a run's x values are its steps times the prompts a step recorded for it
    (8-document and 24-document groups plot against prompts seen); results written before the
    figure was recorded use the call's --prompts_per_step."""
    curve = load_script("curve")
    results = {"prompts_per_step": {"v19": 24, "v13": 8}}
    assert curve.prompts_seen(results, "v19", [0, 17, 67], 8) == [0, 408, 1608]
    assert curve.prompts_seen(results, "v13", [0, 200], 24) == [0, 1600]
    assert curve.prompts_seen({}, "old", [0, 10], 8) == [0, 80]


def test_hybrid_weight_sweep_ends_in_each_ranking_alone():
    """train/hybrid_weight.py: alpha 0 is the reranker's ranking, 1 the first stage's, and the
    baseline alpha against itself is no difference."""
    from erank_fast.evaluation.metrics import evaluate
    from erank_fast.evaluation.trec import Candidate, Query

    module = load_script("hybrid_weight")
    rng = random.Random(9)
    queries, qrels, run = [], {}, {}
    for q in range(8):
        qid = f"q{q}"
        cands = tuple(Candidate(f"{qid}d{i}", "", rng.uniform(0, 10)) for i in range(12))
        queries.append(Query(qid, "", cands))
        qrels[qid] = {c.docid: rng.choice((0, 0, 1, 2)) for c in cands}
        qrels[qid][cands[0].docid] = 2  # every query has a relevant document
        run[qid] = {c.docid: rng.uniform(0, 10) for c in cands}
    rows = module.sweep(queries, qrels, run, [0.0, 0.2, 1.0], baseline=0.2)
    first = {q.qid: {c.docid: c.score for c in q.candidates} for q in queries}
    assert rows[0][1] == pytest.approx(evaluate(run, qrels)[0]["ndcg@10"])
    assert rows[2][1] == pytest.approx(evaluate(first, qrels)[0]["ndcg@10"])
    assert rows[1][2].difference == 0.0 and rows[1][2].p_value == 1.0
    with pytest.raises(ValueError, match="no scores for 1 of the queries"):
        module.sweep(queries, qrels, {k: v for k, v in run.items() if k != "q3"}, [0.1], 0.2)
