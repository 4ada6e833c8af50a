/* omp_peer.c is the OpenMP peer of dag_bench.c: the same three shapes of
 * empty steps as `#pragma omp task` with `depend` clauses (gcc -fopenmp,
 * libgomp), created by one thread inside a parallel region, timed from the
 * first task created to the last one finished (the region's closing
 * barrier). Prints one line per repetition:
 *   omp SHAPE STEPS SECONDS STEPS_PER_S
 * Usage: omp_peer fan|fan_plain|chain|wave [steps] [reps] */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One byte per step: the addresses the depend clauses name. */
static char *cell;

/* The task body: an opaque call, as dag_bench's step function is, so the
 * compiler cannot drop an empty task. */
__attribute__((noinline)) static void step(size_t k) {
  __asm__ volatile("" : : "r"(k) : "memory");
}

/* The fan as the issue words it, a `task depend` program: each task names
 * its own cell, so no two tasks are ordered. */
static void fan(size_t n) {
#pragma omp parallel
#pragma omp single
  for (size_t k = 0; k < n; k++) {
#pragma omp task depend(out : cell[k])
    {
      step(k);
    }
  }
}

/* The same without depend clauses: libgomp then runs most tasks at once on
 * the creating thread (it defers at most 64 per thread), so this measures
 * little more than a loop of calls. Reported as a second peer figure. */
static void fan_plain(size_t n) {
#pragma omp parallel
#pragma omp single
  for (size_t k = 0; k < n; k++) {
#pragma omp task
    {
      step(k);
    }
  }
}

static void chain(size_t n) {
#pragma omp parallel
#pragma omp single
  {
#pragma omp task depend(out : cell[0])
    {
      step(0);
    }
    for (size_t k = 1; k < n; k++) {
#pragma omp task depend(in : cell[k - 1]) depend(out : cell[k])
      {
        step(k);
      }
    }
  }
}

static void wave(size_t side) {
#pragma omp parallel
#pragma omp single
  for (size_t i = 0; i < side; i++)
    for (size_t j = 0; j < side; j++) {
      size_t k = i * side + j;
      /* Out-of-range neighbours name this step's own cell: no edge. */
      size_t up = i > 0 ? k - side : k, left = j > 0 ? k - 1 : k;
#pragma omp task depend(in : cell[up], cell[left]) depend(out : cell[k])
      {
        step(k);
      }
    }
}

int main(int argc, char **argv) {
  const char *shape = argc > 1 ? argv[1] : "fan";
  size_t n = argc > 2 ? strtoul(argv[2], NULL, 10) : 1000000;
  int reps = argc > 3 ? atoi(argv[3]) : 1;
  cell = calloc(n ? n : 1, 1);
  if (!cell) return 1;
  /* Start the team outside the timed part. */
#pragma omp parallel
  {
    step(0);
  }
  for (int r = 0; r < reps; r++) {
    size_t steps = n, side = 0;
    double t0 = omp_get_wtime();
    if (strcmp(shape, "fan") == 0) {
      fan(n);
    } else if (strcmp(shape, "fan_plain") == 0) {
      fan_plain(n);
    } else if (strcmp(shape, "chain") == 0) {
      chain(n);
    } else if (strcmp(shape, "wave") == 0) {
      side = 1;
      while ((side + 1) * (side + 1) <= n) side++;
      steps = side * side;
      wave(side);
    } else {
      fprintf(stderr, "omp_peer: unknown shape '%s'\n", shape);
      return 64;
    }
    double total = omp_get_wtime() - t0;
    printf("omp %s %zu %.6f %.0f threads=%d\n", shape, steps, total,
           (double)steps / total, omp_get_max_threads());
    fflush(stdout);
  }
  free(cell);
  return 0;
}
