"""Teacher data for SFT, as in the paper: a teacher model writes k reasoned outputs per
(query, document) (default 3); the one whose score is closest to the mean of the k is kept;
outputs that hit the length limit or have no readable score are dropped.

    python train/distill.py --teacher MODEL --data FILE.jsonl --qrels FILE.qrels --out teacher.jsonl

The output is JSONL {"qid", "docid", "output", "score", "scores"} and is resumable: pairs
already in ``--out`` are skipped, and each finished query is appended at once.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tqdm.auto import tqdm

from erank_fast.training import data as train_data
from erank_fast.training.arguments import ScriptParser
from erank_fast.training.data import consensus


def main(argv=None) -> None:
    from erank_fast import Reranker
    from erank_fast.scoring import parse_answer

    p = ScriptParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="any Reranker-loadable model")
    p.add_argument("--data", required=True)
    p.add_argument("--qrels", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--max_new_tokens", type=int, default=2048, help="longer outputs are dropped")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top_p", type=float, default=0.95)
    p.add_argument("--docs_per_query", type=int, default=20)
    p.add_argument("--positives", type=int, default=1)
    p.add_argument("--max_queries", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    teacher = Reranker.from_pretrained(args.teacher)
    queries, qrels = train_data.load(args.data, args.qrels)
    done = set()
    out = Path(args.out)
    if out.is_file():
        done = {(r["qid"], r["docid"]) for r in map(json.loads, out.read_text().splitlines()) if r}
    rng = random.Random(args.seed)
    eos = teacher.eos_ids
    with out.open("a", encoding="utf-8") as f:
        for q in tqdm(queries[: args.max_queries], desc="distilling", unit="query"):
            picks = train_data.pick_documents(q, qrels.get(q.qid, {}), args.docs_per_query,
                                              args.positives, rng)
            picks = [pk for pk in picks if (q.qid, pk.docid) not in done]
            if not picks:
                continue
            prompts = [teacher.prompt_ids(q.text, pk.text) for pk in picks]
            samples = teacher.sample(prompts, n=args.samples, temperature=args.temperature,
                                     top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                                     seed=args.seed)
            for pk, per_pair in zip(picks, samples):
                # An output that never ended (no end-of-sequence) ran over the length limit.
                finished = [s for s in per_pair if s.completion_ids and s.completion_ids[-1] in eos]
                texts = [teacher.tokenizer.decode(s.completion_ids, skip_special_tokens=True)
                         for s in finished]
                scores = [parse_answer(t) for t in texts]
                kept = consensus(texts, scores)
                if kept is not None:
                    f.write(json.dumps({"qid": q.qid, "docid": pk.docid, "output": kept[0],
                                        "score": kept[1], "scores": scores}) + "\n")
            f.flush()


if __name__ == "__main__":
    main()
