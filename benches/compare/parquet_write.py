"""Parquet write throughput of preference-pair rows: Orchard's writer vs pyarrow, same rows, same settings.

One command:
    python benches/compare/parquet_write.py [--rows 100000] [--repeat 5] [--zstd-level 3] [--row-group-rows 8192]

1. Builds (release) and runs `orchard-datasets-tool write-pairs`, which generates N synthetic pairs rows (standard
   TRL form + meta columns; prompt ~60 words, completions ~100 words) and times Orchard's writer: Rust structs ->
   typed Arrow builders -> ArrowWriter (zstd, row groups) -> file. Median of --repeat runs, timed in-process; it
   also times the two halves separately (structs -> Arrow batches; batches -> Parquet file).
2. Reads that very file back with pyarrow (so both sides write identical rows) and times, median of --repeat:
   (a) `pq.write_table` of the in-memory Arrow table (encode + compress + write only), and
   (b) `pa.Table.from_pylist(rows)` + `pq.write_table` (from Python objects, the analogue of Orchard's path).
   Same compression (zstd at the same level), row-group size, dictionary encoding and statistics defaults.
3. Prints a table and ends with ONE JSON line of figures.

Pass --tool PATH to use an already built binary instead of `cargo build --release`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]


def build_tool():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "orchard-datasets", "--bin", "orchard-datasets-tool"],
                   cwd=REPO, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "release" / "orchard-datasets-tool"


def median_time(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--zstd-level", type=int, default=3)
    ap.add_argument("--row-group-rows", type=int, default=8192)
    ap.add_argument("--tool", type=Path, help="a built orchard-datasets-tool (default: cargo build --release)")
    args = ap.parse_args()

    tool = args.tool or build_tool()
    with tempfile.TemporaryDirectory(prefix="orchard-bench-") as tmp:
        tmp = Path(tmp)
        orchard_file = tmp / "orchard.parquet"
        out = subprocess.run(
            [str(tool), "write-pairs", "--rows", str(args.rows), "--out", str(orchard_file), "--repeat", str(args.repeat),
             "--zstd-level", str(args.zstd_level), "--row-group-rows", str(args.row_group_rows)],
            check=True, capture_output=True, text=True)
        orchard = json.loads(out.stdout.strip().splitlines()[-1])

        table = pq.read_table(orchard_file)
        assert table.num_rows == args.rows
        pyarrow_file = tmp / "pyarrow.parquet"
        settings = dict(compression="zstd", compression_level=args.zstd_level, row_group_size=args.row_group_rows)

        arrow_s, arrow_all = median_time(lambda: pq.write_table(table, pyarrow_file, **settings), args.repeat)
        assert pq.read_table(pyarrow_file).equals(table), "pyarrow wrote different rows"
        pyarrow_bytes = pyarrow_file.stat().st_size

        rows = table.to_pylist()
        schema = table.schema
        py_s, py_all = median_time(lambda: pq.write_table(pa.Table.from_pylist(rows, schema=schema), pyarrow_file,
                                                          **settings), args.repeat)

    figures = {
        "bench": "parquet_write_pairs",
        "rows": args.rows,
        "repeat": args.repeat,
        "zstd_level": args.zstd_level,
        "row_group_rows": args.row_group_rows,
        "orchard_rows_per_s": round(orchard["rows_per_s"]),
        "orchard_s": round(orchard["seconds_median"], 4),
        "orchard_bytes": orchard["bytes"],
        "orchard_build_s": round(orchard["build_seconds_median"], 4),
        "orchard_encode_write_s": round(orchard["encode_write_seconds_median"], 4),
        "pyarrow_table_rows_per_s": round(args.rows / arrow_s),
        "pyarrow_table_s": round(arrow_s, 4),
        "pyarrow_pylist_rows_per_s": round(args.rows / py_s),
        "pyarrow_pylist_s": round(py_s, 4),
        "pyarrow_bytes": pyarrow_bytes,
        "ratio_vs_pyarrow_table": round(orchard["rows_per_s"] / (args.rows / arrow_s), 3),
        "ratio_vs_pyarrow_pylist": round(orchard["rows_per_s"] / (args.rows / py_s), 3),
        "pyarrow_version": pa.__version__,
    }
    print(f"{'writer':<42}{'rows/s':>12}{'median s':>10}{'MB':>8}")
    print(f"{'orchard (structs -> builders -> zstd)':<42}{figures['orchard_rows_per_s']:>12,}{orchard['seconds_median']:>10.3f}"
          f"{orchard['bytes'] / 1e6:>8.1f}")
    print(f"{'pyarrow write_table (Arrow table)':<42}{figures['pyarrow_table_rows_per_s']:>12,}{arrow_s:>10.3f}"
          f"{pyarrow_bytes / 1e6:>8.1f}")
    print(f"{'pyarrow from_pylist + write_table':<42}{figures['pyarrow_pylist_rows_per_s']:>12,}{py_s:>10.3f}"
          f"{pyarrow_bytes / 1e6:>8.1f}")
    print(f"  of which Rust structs -> Arrow batches {figures['orchard_build_s']:.3f} s, "
          f"batches -> Parquet file {figures['orchard_encode_write_s']:.3f} s (separate runs)")
    print(f"orchard / pyarrow: {figures['ratio_vs_pyarrow_table']}x (from Arrow table), "
          f"{figures['ratio_vs_pyarrow_pylist']}x (from Python objects)")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
