# moe.c — build with `make`, test with `make test`.
CC ?= gcc
# -O3 without fast-math: llm.c's GELU backward once broke under -Ofast (its issue #19).
# -fno-math-errno only says nothing reads errno after sqrtf & co. (nothing here does): gcc then
# vectorises the AdamW loop (a vsqrtps instead of a scalar sqrtss and an errno check per element).
# Results are unchanged: IEEE sqrt is correctly rounded either way.
# -Wno-psabi: without AVX-512, gcc notes once per file that moe.h's 64-byte vector functions
# (exp_approx16 & co.) would pass their vectors differently from older gcc; they are all inlined.
CFLAGS ?= -O3 -march=native -fno-math-errno -Wall -Wextra -Wno-unused-function -Wno-psabi
LDLIBS = -lm -lz

# OpenMP if the compiler has it; otherwise a serial build, said out loud.
# (OMPFLAGS stays separate from CFLAGS so `make CFLAGS=...` keeps it.)
OMP_OK := $(shell printf 'int main(void){return 0;}' | $(CC) -fopenmp -x c - -o /dev/null 2>/dev/null && echo yes)
ifeq ($(OMP_OK),yes)
  OMPFLAGS = -fopenmp
else
  OMPFLAGS = -fopenmp-simd
  $(warning OpenMP not found: building single-threaded)
endif

HEADERS = moe.h routers.h metrics.h matmul.h dataloader.h tokenizer.h flags.h mc.h eval.h upcycle.h data/cloze.h data/unicode_tables.h

# MPI (mpi_moe.h): `make USE_MPI=1` builds train_moe with mpicc (Open MPI: apt-get install
# openmpi-bin libopenmpi-dev); `make train_moe_mpi` builds an MPI train_moe_mpi beside the plain
# one (what dev/ci/mpi.sh runs). The default build needs no MPI. After switching USE_MPI, touch
# train_moe.c or `make clean`: make does not know the flags changed.
MPICC ?= mpicc
ifeq ($(USE_MPI),1)
  TRAIN_CC = $(MPICC) -DUSE_MPI
else
  TRAIN_CC = $(CC)
endif

# `make` builds the programs a user runs; the test binaries come with `make test` (test_moe alone
# takes longer to compile than all of these together)
all: train_moe eval_moe data/prepare_text data/make_cloze dev/export_llmc

train_moe: train_moe.c $(HEADERS) mpi_moe.h
	$(TRAIN_CC) $(CFLAGS) $(OMPFLAGS) $< -o $@ $(LDLIBS)

train_moe_mpi: train_moe.c $(HEADERS) mpi_moe.h
	$(MPICC) -DUSE_MPI $(CFLAGS) $(OMPFLAGS) $< -o $@ $(LDLIBS)

eval_moe: eval_moe.c $(HEADERS)
	$(CC) $(CFLAGS) $(OMPFLAGS) $< -o $@ $(LDLIBS)

data/make_cloze: data/make_cloze.c $(HEADERS)
	$(CC) $(CFLAGS) $(OMPFLAGS) $< -o $@ $(LDLIBS)

test_moe: test_moe.c $(HEADERS)
	$(CC) $(CFLAGS) $(OMPFLAGS) $< -o $@ $(LDLIBS)

data/prepare_text: data/prepare_text.c $(HEADERS)
	$(CC) $(CFLAGS) $(OMPFLAGS) $< -o $@ $(LDLIBS)

dev/export_llmc: dev/export_llmc.c $(HEADERS)
	$(CC) $(CFLAGS) $(OMPFLAGS) $< -o $@ $(LDLIBS)

# (without this rule make's implicit one would build the benchmark without OpenMP: one thread, silently)
dev/bench_sgemm: dev/bench_sgemm.c matmul.h
	$(CC) $(CFLAGS) $(OMPFLAGS) $< -o $@ $(LDLIBS)

# two builds of matmul.h in one process, timed call by call (dev/ab_sgemm.c says how); by default
# this matmul.h against itself. Always rebuilt: make cannot see AB_B or AB_BFLAGS change.
AB_A ?= matmul.h
AB_B ?= matmul.h
dev/ab_sgemm: dev/ab_sgemm.c FORCE
	$(CC) $(CFLAGS) $(OMPFLAGS) -c $< -DAB_SIDE=a -DAB_MATMUL='"$(abspath $(AB_A))"' $(AB_AFLAGS) -o dev/ab_sgemm_a.o
	$(CC) $(CFLAGS) $(OMPFLAGS) -c $< -DAB_SIDE=b -DAB_MATMUL='"$(abspath $(AB_B))"' $(AB_BFLAGS) -o dev/ab_sgemm_b.o
	$(CC) $(CFLAGS) $(OMPFLAGS) $< dev/ab_sgemm_a.o dev/ab_sgemm_b.o -o $@ $(LDLIBS)
	@rm -f dev/ab_sgemm_a.o dev/ab_sgemm_b.o

# two train_moe runs in one process, stepping in turns (dev/ab_step.c says how)
dev/ab_step: dev/ab_step.c train_moe.c $(HEADERS) mpi_moe.h
	$(CC) $(CFLAGS) $(OMPFLAGS) $< -o $@ $(LDLIBS)

dev/test_sgemm: dev/test_sgemm.c matmul.h
	$(CC) $(CFLAGS) $(OMPFLAGS) $< -o $@ $(LDLIBS)

# the same test built without AVX-512, so the AVX2 micro-kernel is tested on AVX-512 CPUs too
dev/test_sgemm_avx2: dev/test_sgemm.c matmul.h
	$(CC) $(CFLAGS) -DSGEMM_NO_AVX512 $(OMPFLAGS) $< -o $@ $(LDLIBS)

# and without any vector extension: the scalar micro-kernels every other CPU gets
dev/test_sgemm_scalar: dev/test_sgemm.c matmul.h
	$(CC) $(CFLAGS) -mno-avx512f -mno-avx2 -mno-fma -mno-avx $(OMPFLAGS) $< -o $@ $(LDLIBS)

test: all test_moe dev/test_sgemm dev/test_sgemm_avx2 dev/test_sgemm_scalar
	@sh dev/test_all.sh

# everything CI runs: the fast suites, then the slow ones (dev/ci/*.sh)
ci: all test_moe dev/test_sgemm dev/test_sgemm_avx2 dev/test_sgemm_scalar
	@sh dev/test_all.sh --all

clean:
	rm -f train_moe train_moe_mpi eval_moe test_moe data/prepare_text data/make_cloze dev/test_sgemm dev/test_sgemm_avx2 dev/test_sgemm_scalar dev/bench_sgemm dev/ab_sgemm dev/ab_step dev/export_llmc

# the fast test suite built with AddressSanitizer + UndefinedBehaviorSanitizer (dev/ci/sanitize.sh)
sanitize:
	@sh dev/ci/sanitize.sh

.PHONY: all test ci clean sanitize FORCE
FORCE:
