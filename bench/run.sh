#!/bin/sh
# bench/run.sh (make bench): builds the benchmark programs, runs the issue-2
# scheduler benchmarks and writes their section of bench/RESULTS.md, then
# runs the other areas' bench scripts (llm.sh, store.sh, policy.sh,
# gap_bench.sh) when they exist. Not part of make test.
#   (a)-(c) throughput on empty steps, against OpenMP tasks (dag_bench.c,
#           omp_peer.c): REPS processes of each, alternating, each timing
#           the shape INNER times; the median of all those runs is reported,
#           for anonymous steps and for steps with string ids;
#   (d)     makespan of random sleep DAGs at 8 in flight (makespan_bench.c);
#   (e)     the Standard Task Graph Set at 2 and 4 in flight (stg_bench.c),
#           read from ../shared/stg beside the repository, else $ORCH_STG.
# Knobs: BENCH_REPS (default 3), BENCH_INNER (3), BENCH_DAGS (50), BENCH_STEPS (1000000),
# BENCH_STG_GRAPHS (20), BENCH_ONLY (a space-separated subset of: throughput makespan stg other),
# BENCH_NO_WRITE=1 (print only; leave RESULTS.md alone).
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
B=${BUILD:-build}
OUT=$B/bench
mkdir -p "$OUT"
REPS=${BENCH_REPS:-3}
INNER=${BENCH_INNER:-3}
DAGS=${BENCH_DAGS:-50}
STEPS=${BENCH_STEPS:-1000000}
ONLY=${BENCH_ONLY:-throughput makespan stg other}
want() { case " $ONLY " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

PKGS="lua5.4 libuv libcurl libpq sqlite3 jansson libmicrohttpd libcrypto"
CFLAGS_B="-std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror -Wshadow -Wundef -Wwrite-strings -Wmissing-declarations -Iruntime -Ibench"
LIBS="$B/liborch.a $(pkg-config --libs $PKGS) -lm -pthread"
CC=${CC:-cc}
for p in dag_bench makespan_bench stg_bench; do
  $CC $CFLAGS_B -o "$OUT/$p" "bench/$p.c" $LIBS
done
# The peer needs libgomp: Debian's gcc.
gcc $CFLAGS_B -fopenmp -o "$OUT/omp_peer" bench/omp_peer.c

LOG=$OUT/logs
mkdir -p "$LOG"
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
fmt_m() { awk -v v="$1" 'BEGIN { printf "%.2f M", v / 1e6 }'; }

CPU=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
MACHINE="$(nproc) cores ($CPU), $(uname -sr), gcc $(gcc -dumpfullversion), libuv $(pkg-config --modversion libuv)"
load() { cut -d' ' -f1-3 /proc/loadavg; }
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
# Each part writes its own fragment under $OUT; the section is assembled
# from the fragments, so a partial run (BENCH_ONLY) keeps the other parts'
# latest figures. Each fragment names its machine, date and commit.
SECTION=$OUT/issue2.md
stamp() { echo "Machine: $MACHINE. Date: $(date -u '+%Y-%m-%d %H:%M UTC'). Commit: $REV. Load average at the start: $(load)."; echo; }

# ---- (a)-(c): throughput ----------------------------------------------
if want throughput; then
  SECTION=$OUT/issue2-a.md
  stamp > "$SECTION.new"
  echo "== (a)-(c) throughput: $STEPS steps, $REPS x $INNER alternating runs per shape"
  : > "$LOG/throughput.txt"
  for shape in fan chain wave; do
    i=0
    while [ "$i" -lt "$REPS" ]; do
      "$OUT/dag_bench" "$shape" "$STEPS" "$INNER" - anon | tee -a "$LOG/throughput.txt"
      "$OUT/omp_peer" "$shape" "$STEPS" "$INNER" | tee -a "$LOG/throughput.txt"
      "$OUT/dag_bench" "$shape" "$STEPS" "$INNER" - ids | tee -a "$LOG/throughput.txt"
      [ "$shape" = fan ] && "$OUT/omp_peer" fan_plain "$STEPS" "$INNER" | tee -a "$LOG/throughput.txt"
      i=$((i + 1))
    done
  done
  {
    echo "### (a)-(c) Throughput on empty steps"
    echo
    cat "$SECTION.new"
    echo "Timed together, per run: building the graph (orch_graph_new, orch_graph_reserve"
    echo "with the final step and edge counts, one orch_graph_add_fn per step, one"
    echo "orch_graph_depend_index per edge), orch_graph_validate, and orch_run until every"
    echo "step has finished (not timed: checking every step's status after the run,"
    echo "and orch_graph_free); the steps are C functions that return at once, run on"
    echo "$(nproc) workers. Two hosts: \"anonymous\" adds each step with id NULL (no id: named"
    echo "by its index, as an OpenMP or TBB program holds its tasks by handle); \"string"
    echo "ids\" gives each step an id (\"s<k>\"), checked and hashed (ORCH_BENCH_BY_NAME=1"
    echo "would add the edges by id too). The OpenMP peer (gcc -fopenmp, libgomp, $(nproc) threads)"
    echo "creates the same shape as \`#pragma omp task depend(...)\` from one thread inside"
    echo "a parallel region, timed from the first task created to the region's end."
    echo "$REPS processes of each program, alternating, each timing the shape $INNER"
    echo "times (the first in a fresh process, with cold memory); medians of all"
    echo "$((REPS * INNER)) runs. Load average after them: $(load) (this benchmark itself adds about 2; the"
    echo "machine is shared with other work)."
    echo "Targets: at least the peer's rate, and at least 3 M steps/s."
    echo
    echo "| shape | host | steps | orch steps/s | build / validate / run (s) | OpenMP steps/s | orch / OpenMP | >= OpenMP | >= 3 M/s |"
    echo "|---|---|---|---|---|---|---|---|---|"
  } > "$SECTION"
  for shape in fan chain wave; do
    for who in orch orch-ids; do
      n=$(awk -v w="$who" -v s="$shape" '$1 == w && $2 == s { print $3; exit }' "$LOG/throughput.txt")
      ours=$(awk -v w="$who" -v s="$shape" '$1 == w && $2 == s { print $5 }' "$LOG/throughput.txt" | median)
      peer=$(awk -v s="$shape" '$1 == "omp" && $2 == s { print $5 }' "$LOG/throughput.txt" | median)
      parts=""
      for k in build validate run; do
        v=$(awk -v w="$who" -v s="$shape" -v k="$k" '$1 == w && $2 == s { for (i = 6; i <= NF; i++) if (index($i, k "=") == 1) print substr($i, length(k) + 2) }' "$LOG/throughput.txt" | median)
        parts="$parts${parts:+ / }$v"
      done
      ratio=$(awk -v a="$ours" -v b="$peer" 'BEGIN { printf "%.2f", a / b }')
      ge=$(awk -v a="$ours" -v b="$peer" 'BEGIN { print (a >= b) ? "yes" : "**no**" }')
      m3=$(awk -v a="$ours" 'BEGIN { print (a >= 3e6) ? "yes" : "**no**" }')
      label=$shape; [ "$shape" = fan ] && label="(a) fan"; [ "$shape" = chain ] && label="(b) chain"; [ "$shape" = wave ] && label="(c) wavefront"
      host="anonymous"; [ "$who" = orch-ids ] && host="string ids"
      echo "| $label | $host | $n | $(fmt_m "$ours") | $parts | $(fmt_m "$peer") | $ratio | $ge | $m3 |" >> "$SECTION"
      echo "$shape ($host): orch $(fmt_m "$ours")/s, omp $(fmt_m "$peer")/s, ratio $ratio"
    done
  done
  plain=$(awk '$1 == "omp" && $2 == "fan_plain" { print $5 }' "$LOG/throughput.txt" | median)
  {
    echo
    echo "The fan without depend clauses (\`#pragma omp task\` alone) runs at"
    echo "$(fmt_m "$plain") tasks/s: libgomp defers at most 64 tasks per thread and runs"
    echo "the rest at once on the creating thread, so that is close to a plain loop of"
    echo "calls. With depend clauses, libgomp also runs a task at once when its queue"
    echo "is full, after waiting for the task's dependencies; neither peer builds a"
    echo "graph before running it."
    echo
  } >> "$SECTION"
  rm -f "$SECTION.new"
fi

# ---- (d): makespan of random DAGs -------------------------------------
if want makespan; then
  SECTION=$OUT/issue2-d.md
  stamp > "$SECTION.new"
  echo "== (d) makespan: $DAGS random DAGs of 200 sleep steps, 8 in flight"
  "$OUT/makespan_bench" "$DAGS" 200 8 | tee "$LOG/makespan.txt"
  awk -v dags="$DAGS" '
    $1 == "dag" { n++; m += $6; s += $8; b += $10; l += $12; q += $14;
                  os += $6 / $8 - 1; ob += $6 / $10 - 1; bl += 1 - $6 / $12
                  if ($6 / $8 - 1 > wos) wos = $6 / $8 - 1 }
    END {
      print "### (d) Makespan: random DAGs of sleep steps, at most 8 in flight"
      print ""
      print n " seeded random DAGs (bench/makespan_bench.c: 200 steps of 10-200 ms,"
      print "each step depending on 0-3 distinct earlier steps chosen uniformly),"
      print "run once each with `max_parallel = 8`. (i), (iii), (iv) are computed from"
      print "the durations (bench/sim.h): (i) the same policy with zero overhead (list"
      print "scheduling, ready steps by bottom level, ties to the lower index), (iii)"
      print "level by level (each level list-scheduled on 8 slots, the next level"
      print "starting when its slowest step is done), (iv) the sequential sum; (ii) is"
      print "max(critical path, work / 8)."
      print ""
      while ((getline sline < stampf) > 0) print sline
      print "| | average makespan (ms) | measured vs. it (average of per-DAG ratios) | target | met |"
      print "|---|---|---|---|---|"
      printf "| measured | %.0f | | | |\n", m / n
      printf "| (i) same policy, zero overhead | %.0f | +%.2f%% (worst DAG +%.2f%%) | within 3%% | %s |\n", s / n, 100 * os / n, 100 * wos, (os / n <= 0.03) ? "yes" : "**no**"
      printf "| (ii) lower bound | %.0f | +%.2f%% | within 10%% | %s |\n", b / n, 100 * ob / n, (ob / n <= 0.10) ? "yes" : "**no**"
      printf "| (iii) level by level | %.0f | %.2f%% below | at least 20%% below | %s |\n", l / n, 100 * bl / n, (bl / n >= 0.20) ? "yes" : "**no**"
      printf "| (iv) sequential | %.0f | %.2f%% below | | |\n", q / n, 100 * (1 - m / q)
      print ""
    }' stampf="$SECTION.new" "$LOG/makespan.txt" > "$SECTION"
  rm -f "$SECTION.new"
fi

# ---- (e): the Standard Task Graph Set ---------------------------------
if want stg; then
  SECTION=$OUT/issue2-e.md
  stamp > "$SECTION.new"
  STG=""
  if [ -d "$ROOT/../shared/stg" ]; then STG=$ROOT/../shared/stg
  elif [ -n "${ORCH_STG:-}" ] && [ -d "$ORCH_STG" ]; then STG=$ORCH_STG; fi
  if [ -z "$STG" ]; then
    echo "== (e) skipped: no ../shared/stg and no ORCH_STG"
    { echo "### (e) Standard Task Graph Set"; echo; echo "Not run: the set was not found (../shared/stg or \$ORCH_STG)."; echo; } > "$SECTION"
  else
    echo "== (e) STG from $STG"
    : > "$LOG/stg.txt"
    for size in 50 100; do
      for p in 2 4; do
        "$OUT/stg_bench" "$STG" "$p" "$size" "${BENCH_STG_GRAPHS:-20}" | tee -a "$LOG/stg.txt"
      done
    done
    awk '
      $1 == "stg" { split($2, f, "/"); k = f[1] "," $4; n[k]++; r[k] += $12 - 1; s[k] += $10 / $8 - 1
                    if ($12 - 1 > w[k]) w[k] = $12 - 1; if (NF > 12) bk[k]++
                    N++; R += $12 - 1; S += $10 / $8 - 1 }
      END {
        print "### (e) Standard Task Graph Set, at most 2 and 4 in flight"
        print ""
        print "The first 20 random graphs of 50 and of 100 tasks (Tobita and Kasahara,"
        print "2002), one time unit = 10 ms, dummy entry and exit tasks dropped, against"
        print "the published optimum for that processor count (where optimality was never"
        print "proven, the best known makespan). \"policy\" is our policy simulated with"
        print "zero overhead, to separate the policy from the runtime. Target: within 5%"
        print "of the optimum on average."
        print ""
        while ((getline sline < stampf) > 0) print sline
        print "| tasks | in flight | graphs | measured over optimum (avg) | worst graph | policy over optimum (avg) | not proven optimal |"
        print "|---|---|---|---|---|---|---|"
        split("50,2 50,4 100,2 100,4", keys, " ")
        for (i = 1; i <= 4; i++) { k = keys[i]; if (!n[k]) continue; split(k, a, ",")
          printf "| %s | %s | %d | +%.2f%% | +%.2f%% | +%.2f%% | %d |\n", a[1], a[2], n[k], 100 * r[k] / n[k], 100 * w[k], 100 * s[k] / n[k], bk[k] + 0 }
        printf "| all | | %d | **+%.2f%%** | | +%.2f%% | |\n", N, 100 * R / N, 100 * S / N
        print ""
        printf "Target within 5%% of the optimum on average: %s.\n", (R / N <= 0.05) ? "met" : "**not met**"
        print ""
      }' stampf="$SECTION.new" "$LOG/stg.txt" > "$SECTION"
  fi
  rm -f "$SECTION.new"
fi

SECTION=$OUT/issue2.md
{
  for part in a d e; do
    [ -f "$OUT/issue2-$part.md" ] && cat "$OUT/issue2-$part.md"
  done
  # Hand-written notes (profile, changes to the core) follow the figures.
  [ -f bench/issue2-notes.md ] && cat bench/issue2-notes.md
} > "$SECTION"

if [ "${BENCH_NO_WRITE:-0}" != 1 ]; then
  sh bench/section.sh issue2 "Issue 2: scheduler" < "$SECTION"
  echo "== wrote bench/RESULTS.md (section issue2)"
else
  cat "$SECTION"
fi

# ---- the other areas' bench scripts -----------------------------------
if want other; then
  for s in llm store policy gap_bench; do
    if [ -f "bench/$s.sh" ]; then
      echo "== bench/$s.sh"
      sh "bench/$s.sh" || echo "== bench/$s.sh failed (status $?)"
    fi
  done
fi
