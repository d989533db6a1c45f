"""``erank-fast`` command line: rerank a file of documents, run the built-in demo, evaluate on
first-stage candidates and compare evaluations, serve HTTP rerank requests (one process or Ray
Serve replicas), or score query files in batch on a Ray actor pool."""

from __future__ import annotations

import argparse
import json
import os
import sys

from erank_fast import cli_eval
from erank_fast.config import BACKENDS, QUANTIZE_MODES, parse_think
from erank_fast.prompt import TEMPLATES
from erank_fast.scoring import SCORE_MODES

DEFAULT_MODEL = "erank-smol"
LIMIT_OPTIONS = {  # RerankerConfig fields settable from the command line (default: the model's)
    "max_query_tokens": "truncate queries to this many tokens",
    "max_doc_tokens": "truncate documents to this many tokens",
    "max_batch_tokens": "tokens per forward pass (default 8192 on CUDA, 4096 on CPU)",
    "kv_memory": "bytes for the K/V arena (default 90%% of free GPU memory, 2 GiB on CPU)",
}
API_KEY_ENV = "ERANK_FAST_API_KEY"  # erank-fast serve's key, when --api-key is not given

DEMO_QUERY = "how do vaccines train the immune system"
DEMO_DOCUMENTS = [
    "The Eiffel Tower was completed in 1889 and is one of the most visited monuments in Paris.",
    "Vaccines expose the immune system to a harmless piece or weakened form of a pathogen, so "
    "it produces antibodies and memory cells that recognise the real pathogen later.",
    "A balanced diet includes fruits, vegetables, whole grains and lean proteins.",
    "Memory B cells and T cells created after vaccination allow the body to respond faster and "
    "more strongly when it meets the same virus again.",
    "The stock market closed higher on Friday after strong earnings from technology companies.",
    "Herd immunity occurs when enough people are immune to a disease that its spread becomes "
    "unlikely, protecting those who cannot be vaccinated.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "mRNA vaccines deliver instructions for cells to make a viral protein, which the immune "
    "system learns to attack without ever meeting the virus itself.",
]


def _read_documents(path: str) -> list:
    """One document per line, or JSONL objects with a "text" key (other keys kept). A file that
    cannot be read, is not UTF-8 or has a malformed JSON line is a ValueError naming it."""
    docs = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = list(f)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason})") from e
    for n, line in enumerate(lines, 1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: invalid JSON ({e.msg})") from e
            if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
                raise ValueError(f'{path}:{n}: a JSON line needs a string "text" field')
            docs.append(doc)
        else:
            docs.append(line)
    return docs


def _reranker_options(args) -> dict:
    """``Reranker.from_pretrained`` keyword arguments from the model options (picklable, so
    Ray actors and replicas can load the same reranker)."""
    import torch

    dtype = getattr(torch, args.dtype) if args.dtype else None
    limits = {name: getattr(args, name) for name in LIMIT_OPTIONS
              if getattr(args, name, None) is not None}
    return dict(adapter=args.adapter, device=args.device, dtype=dtype, think=args.think,
                backend=args.backend, score_mode=args.score_mode, template=args.template,
                hybrid_order=getattr(args, "hybrid_order", False) or None,
                quantize=getattr(args, "quantize", None), **limits)


def _load(args):
    from erank_fast import Reranker

    return Reranker.from_pretrained(args.model, **_reranker_options(args))


def _print(results, as_json: bool) -> None:
    if as_json:
        for r in results:
            doc = r.document if isinstance(r.document, dict) else {"text": r.document}
            print(json.dumps({"rank": results.index(r) + 1, "index": r.index, "score": r.score,
                              "answer": r.answer, "probability": r.probability,
                              "num_generated_tokens": r.num_generated_tokens, **doc},
                             ensure_ascii=False))
        return
    for rank, r in enumerate(results, 1):
        text = r.document["text"] if isinstance(r.document, dict) else r.document
        answer = "-" if r.answer is None else r.answer
        text = text if len(text) <= 100 else text[:97] + "..."
        print(f"{rank:>3}. score {r.score:6.3f}  answer {answer!s:>2}  p {r.probability:.2f}  "
              f"[{r.index}] {text}")


def _stats_line(results) -> str:
    s = results.stats
    return (f"{s.documents} documents in {s.seconds:.2f} s ({s.docs_per_second:.1f} docs/s), "
            f"{s.prefill_tokens} prefill + {s.decode_tokens} decode tokens")


def model_options(p: argparse.ArgumentParser) -> None:
    """The options that choose and configure the reranker, shared by every command."""
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="packaged reranker, checkpoint directory, .gguf file or offline name "
                        f"(default {DEFAULT_MODEL})")
    p.add_argument("--adapter", default=None, help="LoRA adapter directory to merge")
    p.add_argument("--think", type=parse_think, default=None,
                   help='"off", "full" or a token budget (default: the model\'s own, else off)')
    p.add_argument("--score-mode", default=None, choices=list(SCORE_MODES),
                   help="default: the model's own (erank-smol: expected), else erank")
    p.add_argument("--template", default=None, choices=list(TEMPLATES),
                   help="the prompt's layout (default: the model's own (erank-smol's is in its "
                        "erank_fast.json), else erank)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--backend", default="auto", choices=list(BACKENDS))
    p.add_argument("--quantize", default=None, choices=list(QUANTIZE_MODES),
                   help="int8: int8 decoder linear layers (float32 or bfloat16 models, CPUs with "
                        "AMX-INT8, AVX512-VNNI or AVX2 (7-bit weights there); float32 models "
                        "with AVX512-VNNI also int8 "
                        "prefill attention; a small score error: see README)")
    for name, help_text in LIMIT_OPTIONS.items():
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None, help=help_text)


def _kernels(args) -> int:
    from erank_fast import aot

    try:
        archs = [int(a) for a in args.arch.split(",")]
        dtypes, shapes = args.dtype.split(","), args.shape.split(",")
        bad = ([a for a in archs if a not in aot.SHARED_LIMIT]
               + [d for d in dtypes if d not in aot.DTYPES]
               + [s for s in shapes if s not in aot.SHAPES])
        if bad:
            raise ValueError(f"unknown {bad}; archs {list(aot.SHARED_LIMIT)}, dtypes "
                             f"{list(aot.DTYPES)}, shapes {list(aot.SHAPES)}")
    except ValueError as e:
        print(f"erank-fast kernels: {e}", file=sys.stderr)
        return 2
    records = aot.compile_all(archs, dtypes, shapes, processes=args.processes)
    print(aot.format_table(records))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(aot.records_json(records), f, indent=1)
    failing = [r for r in records if r.problems()]
    print(f"{len(records)} compiled kernels, {len(failing)} with problems")
    return 1 if failing else 0


def _serve(args) -> int:
    try:
        from erank_fast.server import ServerLimits, serve
    except ImportError as e:
        print(f"erank-fast serve needs the 'serve' extra (pip install 'erank_fast[serve]'): {e}",
              file=sys.stderr)
        return 2
    if args.max_documents < 1 or args.max_request_bytes < 1:
        print("erank-fast: --max-documents and --max-request-bytes must be positive",
              file=sys.stderr)
        return 2
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    limits = ServerLimits(max_documents=args.max_documents,
                          max_request_bytes=args.max_request_bytes, api_key=api_key)
    if args.replicas is None:
        return serve(lambda: _load(args), model_name=args.model, host=args.host, port=args.port,
                     limits=limits)
    from erank_fast import cli_ray

    return cli_ray.serve_replicas(args, limits, _reranker_options(args))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="erank-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("rerank", "rerank documents from a file for one query"),
                            ("demo", "rerank a built-in example")):
        p = sub.add_parser(name, help=help_text)
        model_options(p)
        p.add_argument("--top-k", type=int, default=None)
        p.add_argument("--json", action="store_true", help="one JSON object per line")
        if name == "rerank":
            p.add_argument("--query", required=True)
            p.add_argument("--docs", required=True,
                           help="one document per line, or JSONL with 'text'")
    cli_eval.add_parsers(sub, model_options)
    s = sub.add_parser("serve", help="serve /v1/rerank over HTTP (needs the 'serve' extra)")
    model_options(s)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-documents", type=int, default=1000,
                   help="most documents per request (413 above)")
    s.add_argument("--max-request-bytes", type=int, default=8 * 2**20,
                   help="largest request body (413 above)")
    s.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV} if set, "
                        "else no key; the variable keeps the key out of the process list)")
    s.add_argument("--hybrid-order", action="store_true",
                   help="requests without first_stage_scores list their documents in the "
                        "retriever's order, best first: rank them by the hybrid with that order "
                        '(as first_stage_scores: "order" asks for one request)')
    from erank_fast import cli_ray  # its options only: Ray itself is imported when used

    cli_ray.add_replica_options(s)
    cli_ray.add_rerank_batch_parser(sub, model_options)
    k = sub.add_parser("kernels", help="compile every Triton kernel for NVIDIA GPUs (no GPU "
                                       "needed) and report registers, spills, shared memory, "
                                       "tensor-core use")
    k.add_argument("--arch", default="80,90", help="compute capabilities, e.g. 80,90 (sm_90a)")
    k.add_argument("--dtype", default="float16,bfloat16")
    k.add_argument("--shape", default="qwen3-4b,smollm2-135m", help="model shapes")
    k.add_argument("--processes", type=int, default=None, help="parallel compiles (one per core)")
    k.add_argument("--json", dest="json_out", default=None, help="write the records as JSON")
    args = parser.parse_args(argv)
    if args.command == "kernels":
        return _kernels(args)
    if args.command == "eval":
        return cli_eval.run_eval(args, _load)
    if args.command == "compare":
        return cli_eval.run_compare(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "rerank-batch":
        return cli_ray.rerank_batch(args, _reranker_options(args))

    try:  # unreadable input, a model that does not load, a call the limits refuse
        if args.command == "rerank":
            query, docs = args.query, _read_documents(args.docs)
        else:
            query, docs = DEMO_QUERY, DEMO_DOCUMENTS
        reranker = _load(args)
        if args.command == "demo" and not args.json:
            print(f"query: {query}")
        results = reranker.rerank(query, docs, top_k=args.top_k)
    except (OSError, ValueError) as e:
        print(f"erank-fast: {e}", file=sys.stderr)
        return 2
    _print(results, args.json)
    print(_stats_line(results), file=sys.stderr if args.json else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
