/* One pass per tensor for the statistics of float32 tensors in host memory.
 *
 * torch has no operation that reduces min, max, sum, sum of squares, absolute sum, sign
 * counts and the change against a kept copy together: the pure torch path
 * (dbgcli/torch/_stats.py) makes five to seven passes over each weight and four over each
 * gradient, and on a CPU those passes, not the arithmetic, are what a recorded step costs.
 * Here each tensor is read once (and its copy read and rewritten once), for all of a step's
 * tensors in one call without the GIL, and the result is the trace format's statistics
 * row: the host has no arithmetic left to do.
 *
 * Sums are accumulated in float32 over 16 independent lanes within chunks of 2,048 values
 * (so the compiler vectorises them without reordering anything), and the chunks' sums in
 * float64: each float32 partial sum adds at most 128 values, so the sum of squares of a
 * million random values is within about 1e-8 of float64's, where one float32 dot product is
 * within 1e-5 (bench/bench_reductions.py prints both). On near-constant data the rounding is
 * systematic, up to a millionth of the mean: the second pass corrects it where the spread
 * is small enough for that to matter.
 *
 * On Linux, where the compiler takes OpenMP (setup.py), a call can be shared out among
 * ``threads`` threads of the process's OpenMP runtime. The extension asks for libgomp.so.1,
 * and so does torch (its wheels bring a copy of that name): whichever is loaded first serves
 * both, and torch's intra-op threads are then the kernel's. dbgcli/torch/_stats.py checks that
 * (openmp_address() against torch's) and passes one thread otherwise, and with one thread the
 * runtime is not called at all. The hook runs right after a backward pass, while torch's
 * threads still wait for work, so the reductions take the cores the training step uses
 * instead of one of them. The work is split as ATen's parallel_for splits an element-wise
 * operation: a tensor of more than GRAIN values into contiguous parts, the first on the
 * calling thread, and smaller tensors whole on the calling thread. Each part is then read on
 * the core whose cache torch's own operations on it left it in: a thread reading a gradient
 * that another core wrote (whole tensors dealt out to threads did) takes a copy of its cache
 * lines, and the next backward pass, writing the gradient again on that other core, waits for
 * those copies to be invalidated first (0.4-0.9 ms of the 4x512 MLP's next step on the
 * project's virtual machine, at the slower of its two speeds). Parts start at chunk
 * boundaries, and the chunks' lane sums are added in order afterwards: the results are the
 * same to the bit as one thread's.
 *
 * Built as an optional extension (setup.py): without a C compiler dbgcli installs without it
 * and the torch path computes the same statistics.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#if defined(_OPENMP)
#include <omp.h>
#endif

/* The NaN and infinity checks below are the contract with the caller; fast-math would remove
 * them. (The build is optional: an error here leaves torch's path.) */
#if defined(__FAST_MATH__)
#error "dbgcli.torch._fused must be compiled without fast-math"
#endif

/* GCC on x86-64 with glibc (whose ifunc picks a clone at load time): an AVX2 clone beside
 * the baseline; the baseline alone elsewhere (musl has no ifunc). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

/* ATen's grain size (at::internal::GRAIN_SIZE): its element-wise operations run on the calling
 * thread up to this many values, and in parts of at least this many above. */
#define GRAIN 32768
#define LANES 16
#define CHUNK 2048
/* E[x^2] - E[x]^2 keeps its digits while the squared mean is within this factor of the
 * variance (the torch path's and the writer's float32 test); beyond, a second pass. */
#define ONE_PASS_DIGITS 1e2

/* What one pass over a part of a tensor leaves for the fold: per lane, the smallest and the
 * largest value, and the sign counts. The first part adds its chunks' lane sums up itself,
 * from 0 as one pass over the whole tensor does; the others cannot (their sums continue the
 * parts' before them), and write their chunks' lanes to the call's scratch memory instead
 * (LANE_SUMS sums of LANES lanes per chunk) for the fold to add in order. */
typedef struct {
    double sum, squares, l1, update;
    float low[LANES], high[LANES];
    int64_t positive, zero;
} Part;

enum { SUM, SQUARES, ABSOLUTE, UPDATE, LANE_SUMS };

/* A tensor's sums once its parts are folded. */
typedef struct {
    double sum, squares, l1, update;
    float low, high;
    int64_t positive, zero;
} Sums;

/* The pass over values [begin, end) of a tensor (begin at a chunk boundary), specialised by
 * macro for each combination of absolute sum, update and sign counts, so that each loop has
 * only the arithmetic it needs. ``lanes``, unless NULL, receives the lane sums of the part's
 * chunks instead of ``out``. */
#define DEFINE_PASS(NAME, WITH_L1, WITH_UPDATE, WITH_SIGNS)                                  \
    VECTOR_CLONES static void NAME(const float *__restrict x, float *__restrict previous,    \
                                   Py_ssize_t begin, Py_ssize_t end,                          \
                                   float *__restrict lanes, Part *out)                        \
    {                                                                                         \
        float low[LANES], high[LANES];                                                        \
        int32_t positive[LANES] = {0}, zero[LANES] = {0};                                     \
        double sum = 0.0, squares = 0.0, l1 = 0.0, update = 0.0;                              \
        int64_t positives = 0, zeros = 0;                                                     \
        Py_ssize_t i = begin;                                                                 \
        for (int j = 0; j < LANES; j++) {                                                     \
            low[j] = INFINITY;                                                                \
            high[j] = -INFINITY;                                                              \
        }                                                                                     \
        while (i < end) {                                                                     \
            float s[LANES] = {0}, q[LANES] = {0}, a[LANES] = {0}, u[LANES] = {0};             \
            Py_ssize_t stop = end - i > CHUNK ? i + CHUNK : end;                              \
            Py_ssize_t whole = i + (stop - i) / LANES * LANES;                                \
            for (; i < whole; i += LANES) {                                                   \
                for (int j = 0; j < LANES; j++) {                                             \
                    float v = x[i + j];                                                       \
                    s[j] += v;                                                                \
                    q[j] += v * v;                                                            \
                    if (WITH_L1) a[j] += fabsf(v);                                            \
                    if (WITH_UPDATE) {                                                        \
                        float d = v - previous[i + j];                                        \
                        u[j] += d * d;                                                        \
                        previous[i + j] = v;                                                  \
                    }                                                                         \
                    if (WITH_SIGNS) {                                                         \
                        positive[j] += v > 0.0f;                                              \
                        zero[j] += v == 0.0f;                                                 \
                    }                                                                         \
                    low[j] = v < low[j] ? v : low[j];                                         \
                    high[j] = v > high[j] ? v : high[j];                                      \
                }                                                                             \
            }                                                                                 \
            for (; i < stop; i++) {                                                           \
                float v = x[i];                                                               \
                s[0] += v;                                                                    \
                q[0] += v * v;                                                                \
                if (WITH_L1) a[0] += fabsf(v);                                                \
                if (WITH_UPDATE) {                                                            \
                    float d = v - previous[i];                                                \
                    u[0] += d * d;                                                            \
                    previous[i] = v;                                                          \
                }                                                                             \
                if (WITH_SIGNS) {                                                             \
                    positive[0] += v > 0.0f;                                                  \
                    zero[0] += v == 0.0f;                                                     \
                }                                                                             \
                low[0] = v < low[0] ? v : low[0];                                             \
                high[0] = v > high[0] ? v : high[0];                                          \
            }                                                                                 \
            for (int j = 0; j < LANES; j++) {                                                 \
                if (lanes) {                                                                  \
                    lanes[SUM * LANES + j] = s[j];                                            \
                    lanes[SQUARES * LANES + j] = q[j];                                        \
                    lanes[ABSOLUTE * LANES + j] = a[j];                                       \
                    lanes[UPDATE * LANES + j] = u[j];                                         \
                } else {                                                                      \
                    sum += s[j];                                                              \
                    squares += q[j];                                                          \
                    l1 += a[j];                                                               \
                    update += u[j];                                                           \
                }                                                                             \
                if (WITH_SIGNS) {                                                             \
                    positives += positive[j];                                                 \
                    zeros += zero[j];                                                         \
                    positive[j] = zero[j] = 0;                                                \
                }                                                                             \
            }                                                                                 \
            if (lanes)                                                                        \
                lanes += LANE_SUMS * LANES;                                                   \
        }                                                                                     \
        out->sum = sum;                                                                       \
        out->squares = squares;                                                               \
        out->l1 = l1;                                                                         \
        out->update = update;                                                                 \
        for (int j = 0; j < LANES; j++) {                                                     \
            out->low[j] = low[j];                                                             \
            out->high[j] = high[j];                                                           \
        }                                                                                     \
        out->positive = positives;                                                            \
        out->zero = zeros;                                                                    \
    }

DEFINE_PASS(pass_0, 0, 0, 0)
DEFINE_PASS(pass_1, 1, 0, 0)
DEFINE_PASS(pass_2, 0, 1, 0)
DEFINE_PASS(pass_3, 1, 1, 0)
DEFINE_PASS(pass_4, 0, 0, 1)
DEFINE_PASS(pass_5, 1, 0, 1)
DEFINE_PASS(pass_6, 0, 1, 1)
DEFINE_PASS(pass_7, 1, 1, 1)

typedef void (*Pass)(const float *, float *, Py_ssize_t, Py_ssize_t, float *, Part *);
/* Indexed by l1 + 2 * update + 4 * signs. */
static const Pass PASSES[8] = {pass_0, pass_1, pass_2, pass_3, pass_4, pass_5, pass_6, pass_7};

static Py_ssize_t chunks_of(Py_ssize_t n) { return (n + CHUNK - 1) / CHUNK; }

/* How many parts ATen's parallel_for makes of n values among ``threads`` threads. */
static int parts_of(Py_ssize_t n, int threads)
{
    if (threads <= 1 || n <= GRAIN)
        return 1;
    Py_ssize_t parts = (n + GRAIN - 1) / GRAIN;
    return parts < threads ? (int)parts : threads;
}

/* Where part p of ``parts`` starts: ATen's boundary, moved to the nearest chunk boundary. */
static Py_ssize_t part_start(Py_ssize_t n, int parts, int p)
{
    if (p >= parts)
        return n;
    Py_ssize_t start = (Py_ssize_t)p * ((n + parts - 1) / parts);
    start = (start + CHUNK / 2) / CHUNK * CHUNK;
    return start < n ? start : n;
}

/* A tensor's sums from its parts, in the order one pass would have added them: the first
 * part's sums, then the later parts' chunks' lanes (``lanes`` from the second part's first
 * chunk to the last chunk) one after the other in float64; each lane's extremes part after
 * part (the first of equal values stays, as in the pass), then the lanes'. */
static Sums fold(const float *lanes, Py_ssize_t chunks, const Part *parts, int count)
{
    Sums s = {parts[0].sum, parts[0].squares, parts[0].l1, parts[0].update,
              INFINITY, -INFINITY, 0, 0};
    float low[LANES], high[LANES];
    for (Py_ssize_t c = 0; c < chunks; c++, lanes += LANE_SUMS * LANES)
        for (int j = 0; j < LANES; j++) {
            s.sum += lanes[SUM * LANES + j];
            s.squares += lanes[SQUARES * LANES + j];
            s.l1 += lanes[ABSOLUTE * LANES + j];
            s.update += lanes[UPDATE * LANES + j];
        }
    for (int j = 0; j < LANES; j++) {
        low[j] = parts[0].low[j];
        high[j] = parts[0].high[j];
        for (int p = 1; p < count; p++) {
            low[j] = parts[p].low[j] < low[j] ? parts[p].low[j] : low[j];
            high[j] = parts[p].high[j] > high[j] ? parts[p].high[j] : high[j];
        }
    }
    for (int j = 1; j < LANES; j++) {
        low[0] = low[j] < low[0] ? low[j] : low[0];
        high[0] = high[j] > high[0] ? high[j] : high[0];
    }
    s.low = low[0];
    s.high = high[0];
    for (int p = 0; p < count; p++) {
        s.positive += parts[p].positive;
        s.zero += parts[p].zero;
    }
    return s;
}

/* The second pass, in float64, for the rare record whose variance is too small beside its
 * mean for the one-pass formula: the corrected two-pass algorithm (Chan, Golub and LeVeque,
 * 1983), whose sum of deviations also corrects ``mean`` itself, which the float32 lanes may
 * have rounded by a millionth: beside a variance a few ulps wide, that would be all of it. */
static void centred(const float *x, Py_ssize_t n, double *mean, double *squared)
{
    double deviations = 0.0, squares = 0.0;
    for (Py_ssize_t i = 0; i < n; i++) {
        double d = (double)x[i] - *mean;
        deviations += d;
        squares += d * d;
    }
    *squared = squares - deviations * deviations / (double)n;
    *mean += deviations / (double)n;
}

/* The trace format's statistics columns (dbgcli.trace.schema.STAT_COLUMNS), in order. */
enum { COUNT, NAN_COUNT, INF_COUNT, MIN, MAX, MEAN, STD, L1, L2, ZERO_FRAC, POS_FRAC, UPDATE_L2,
       WIDTH };

/* A record's statistics from its sums, as dbgcli.torch._stats._finish gives them from torch's
 * reductions; returns 0 where they need the exact path (NaN or infinities, float32 sums that
 * overflowed, a negative value where none was expected). */
static int finish(const float *x, Py_ssize_t n, const Sums *s, int with_l1, int with_update,
                  int with_signs, int nonnegative, double *row)
{
    double count = (double)n, mean = s->sum / count;
    int finite = isfinite(s->sum) && isfinite(s->squares) && isfinite(s->low) &&
                 isfinite(s->high) && !(nonnegative && s->low < 0.0f);
    for (int c = 0; c < WIDTH; c++)
        row[c] = NAN;
    row[COUNT] = count;
    row[UPDATE_L2] = with_update ? sqrt(s->update) : NAN;
    if (!finite)
        return 0;
    double squared = s->squares - s->sum * mean, squares = s->squares;
    if (mean * mean > ONE_PASS_DIGITS * (squared / count)) {
        centred(x, n, &mean, &squared);
        /* Also where the float32 squares underflowed (values below about 1e-22). */
        squares = squared + count * mean * mean;
    }
    if (squared < 0.0)
        squared = 0.0;
    row[NAN_COUNT] = row[INF_COUNT] = 0.0;
    row[MIN] = s->low;
    row[MAX] = s->high;
    row[MEAN] = mean;
    row[STD] = s->low == s->high ? 0.0 : sqrt(squared / count);
    row[L2] = sqrt(squares);
    if (with_l1)
        row[L1] = s->l1;
    else if (nonnegative)
        row[L1] = s->sum;
    if (with_signs) {
        row[POS_FRAC] = (double)s->positive / count;
        row[ZERO_FRAC] = (double)s->zero / count;
    } else {  /* where min and max decide them */
        int all_zero = s->low == 0.0f && s->high == 0.0f;
        if (s->low > 0.0f || s->high < 0.0f) {
            row[POS_FRAC] = s->low > 0.0f;
            row[ZERO_FRAC] = 0.0;
        } else if (all_zero) {
            row[POS_FRAC] = 0.0;
            row[ZERO_FRAC] = 1.0;
        }
    }
    return 1;
}

PyDoc_STRVAR(reduce_doc,
    "reduce(pointers, previous, lengths, out, done, l1, signs, nonnegative, threads, /)\n"
    "--\n\n"
    "The statistics of k contiguous float32 tensors in host memory, one pass each.\n\n"
    "pointers and lengths: uintp and int64 buffers of k addresses and value counts.\n"
    "previous: None, or a uintp buffer of k addresses of float32 copies of the same sizes:\n"
    "each is compared with its tensor (update_l2), then overwritten with it.\n"
    "out: a writable float64 buffer of k rows of the trace format's 12 statistics columns;\n"
    "l1 only if asked (or, if nonnegative, the sum), the fractions of zero and positive\n"
    "values if signs is true, else where min and max decide them; NaN otherwise.\n"
    "done: a writable uint8 buffer of k flags, 0 where the record holds NaN or infinities\n"
    "(or, if nonnegative, a negative value): its row then has only count and update_l2,\n"
    "and the caller computes the rest from the values.\n"
    "threads: how many OpenMP threads may share the work, split as ATen's parallel_for\n"
    "splits an element-wise operation: a tensor of more than 32,768 values in contiguous\n"
    "parts, the first on the calling thread, smaller tensors whole on the calling thread (1:\n"
    "this thread alone, without calling the OpenMP runtime at all; a build without OpenMP\n"
    "ignores it).\n"
    "Returns (how many flags are 0, so that the caller need not scan them; how many threads\n"
    "reduced the tensors).");

/* Where a record's first chunk's lanes and its first part are kept in a call's memory. */
typedef struct {
    Py_ssize_t chunk, part;
} Place;

/* What one call of reduce() reads and where its passes leave their sums. */
typedef struct {
    const uintptr_t *addresses, *copies;
    const int64_t *counts;
    const Place *places;
    float *lanes;
    Part *parts;
    Pass pass;
} Call;

/* The pass over part p of ``parts`` of record r. */
static void pass_part(const Call *call, Py_ssize_t r, int parts, int p)
{
    Py_ssize_t n = (Py_ssize_t)call->counts[r], begin = part_start(n, parts, p);
    Place place = call->places[r];
    float *lanes = p == 0 ? NULL : call->lanes + (place.chunk + begin / CHUNK) * LANE_SUMS * LANES;
    call->pass((const float *)call->addresses[r], call->copies ? (float *)call->copies[r] : NULL,
               begin, part_start(n, parts, p + 1), lanes, call->parts + place.part + p);
}

static PyObject *reduce(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer pointers, lengths, out, done_flags, previous = {0};
    PyObject *previous_object;
    int with_l1, with_signs, nonnegative, threads;
    if (!PyArg_ParseTuple(args, "y*Oy*w*w*pppi", &pointers, &previous_object, &lengths, &out,
                          &done_flags, &with_l1, &with_signs, &nonnegative, &threads))
        return NULL;
    int with_update = previous_object != Py_None;
    PyObject *result = NULL;
    Py_ssize_t k = pointers.len / (Py_ssize_t)sizeof(uintptr_t);
    Place *places = NULL;
    float *lanes = NULL;
    Part *parts = NULL;
    if (with_update && PyObject_GetBuffer(previous_object, &previous, PyBUF_SIMPLE) < 0)
        goto done;
    if (pointers.len != k * (Py_ssize_t)sizeof(uintptr_t) ||
        lengths.len != k * (Py_ssize_t)sizeof(int64_t) ||
        (with_update && previous.len != pointers.len) ||
        out.len != WIDTH * k * (Py_ssize_t)sizeof(double) || done_flags.len != k) {
        PyErr_SetString(PyExc_ValueError, "reduce: buffers of inconsistent sizes");
        goto done;
    }
    const uintptr_t *addresses = pointers.buf, *copies = with_update ? previous.buf : NULL;
    const int64_t *counts = lengths.buf;
    if (threads < 1)
        threads = 1;
    places = PyMem_Malloc((k > 0 ? k : 1) * sizeof(Place));
    if (places == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t chunks = 0, all_parts = 0, largest = 0;
    for (Py_ssize_t r = 0; r < k; r++) {
        Py_ssize_t n = (Py_ssize_t)counts[r];
        if (n > 0 && (addresses[r] == 0 || (copies && copies[r] == 0))) {
            PyErr_SetString(PyExc_ValueError, "reduce: a tensor without memory of its own");
            goto done;
        }
        places[r] = (Place){chunks, all_parts};
        chunks += chunks_of(n);
        all_parts += parts_of(n, threads); /* the most a team of ``threads`` can make */
        largest = n > largest ? n : largest;
    }
    lanes = PyMem_Malloc((chunks > 0 ? chunks : 1) * LANE_SUMS * LANES * sizeof(float));
    parts = PyMem_Malloc((all_parts > 0 ? all_parts : 1) * sizeof(Part));
    if (lanes == NULL || parts == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const Call call = {
        addresses, copies, counts, places, lanes, parts,
        PASSES[with_l1 + 2 * with_update + 4 * with_signs],
    };
    double *rows = out.buf;
    uint8_t *finished = done_flags.buf;
    Py_ssize_t unfinished = 0;
    int team = 1;
    Py_BEGIN_ALLOW_THREADS
#if defined(_OPENMP)
    /* The runtime is not called at all unless a tensor is split: where it is not torch's
     * (the caller then passes 1), starting it could clash with torch's. */
    if (threads > 1 && largest > GRAIN) {
#pragma omp parallel num_threads(threads)
        {
            int size = omp_get_num_threads(), thread = omp_get_thread_num();
            if (thread == 0)
                team = size;
            for (Py_ssize_t r = 0; r < k; r++) {
                int count = parts_of((Py_ssize_t)counts[r], size);
                if (thread < count)
                    pass_part(&call, r, count, thread);
            }
        }
    } else
#endif
    {
        (void)largest; /* read by the shared branch only */
        for (Py_ssize_t r = 0; r < k; r++)
            pass_part(&call, r, 1, 0);
    }
    for (Py_ssize_t r = 0; r < k; r++) {
        Py_ssize_t n = (Py_ssize_t)counts[r];
        const float *x = (const float *)addresses[r];
        int count = parts_of(n, team);
        Py_ssize_t later = chunks_of(part_start(n, count, 1)); /* the second part's chunk */
        Sums s = fold(lanes + (places[r].chunk + later) * LANE_SUMS * LANES,
                      chunks_of(n) - later, parts + places[r].part, count);
        finished[r] = (uint8_t)finish(x, n, &s, with_l1, with_update, with_signs, nonnegative,
                                      rows + r * WIDTH);
        unfinished += !finished[r];
    }
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("ni", unfinished, team);
done:
    PyMem_Free(places);
    PyMem_Free(lanes);
    PyMem_Free(parts);
    PyBuffer_Release(&pointers);
    PyBuffer_Release(&lengths);
    PyBuffer_Release(&out);
    PyBuffer_Release(&done_flags);
    if (previous.obj != NULL)
        PyBuffer_Release(&previous);
    return result;
}

PyDoc_STRVAR(count_units_doc,
    "count_units(pointers, outer, units, inner, low, high, outside, out, /)\n--\n\n"
    "Per tensor and unit, the share of its values that are > low and not >= high (a NaN\n"
    "high: no upper bound, so that +inf counts as above 0), or with outside set, that are\n"
    "> high or in (-inf, low] (NaN in neither): the count over outer * inner, divided in\n"
    "float64 and rounded to float32.\n\n"
    "pointers: a uintp buffer of k addresses of contiguous float32 tensors of one shape,\n"
    "each seen as (outer, units, inner) with the units on the middle axis.\n"
    "out: a writable float32 buffer of k * units shares, tensor after tensor.");

/* Whether x counts: inside (low, high), or with outside set above high or in (-inf, low]. */
#define COUNTS(x, low, high, outside) \
    ((outside) ? ((x) > (high)) | (((x) <= (low)) & ((x) > -INFINITY)) \
               : ((x) > (low)) & !((x) >= (high)))

VECTOR_CLONES static void count_band(const float *x, Py_ssize_t outer, Py_ssize_t units,
                                     Py_ssize_t inner, float low, float high, int outside,
                                     int64_t *counts)
{
    for (Py_ssize_t u = 0; u < units; u++)
        counts[u] = 0;
    if (inner == 1) {  /* (batch, features): the units are adjacent */
        for (Py_ssize_t o = 0; o < outer; o++) {
            const float *row = x + o * units;
            for (Py_ssize_t u = 0; u < units; u++)
                counts[u] += COUNTS(row[u], low, high, outside);
        }
        return;
    }
    for (Py_ssize_t o = 0; o < outer; o++)  /* (batch, channels, ...): a unit's values are */
        for (Py_ssize_t u = 0; u < units; u++) {  /* adjacent */
            const float *run = x + (o * units + u) * inner;
            int64_t counted = 0;
            for (Py_ssize_t i = 0; i < inner; i++)
                counted += COUNTS(run[i], low, high, outside);
            counts[u] += counted;
        }
}

static PyObject *count_units(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer pointers, out;
    Py_ssize_t outer, units, inner;
    float low, high;
    int outside;
    if (!PyArg_ParseTuple(args, "y*nnnffpw*", &pointers, &outer, &units, &inner, &low, &high,
                          &outside, &out))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t k = pointers.len / (Py_ssize_t)sizeof(uintptr_t);
    int64_t *counts = PyMem_Malloc((units > 0 ? units : 1) * sizeof(int64_t));
    if (counts == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (pointers.len != k * (Py_ssize_t)sizeof(uintptr_t) || outer < 0 || units < 0 ||
        inner < 0 || out.len != k * units * (Py_ssize_t)sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "count_units: buffers of inconsistent sizes");
        goto done;
    }
    const uintptr_t *addresses = pointers.buf;
    float *shares = out.buf;
    double values = (double)outer * (double)inner;
    for (Py_ssize_t r = 0; r < k; r++) {
        if (addresses[r] == 0 && outer * units * inner > 0) {
            PyErr_SetString(PyExc_ValueError, "count_units: a tensor without memory of its own");
            goto done;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < k; r++) {
        count_band((const float *)addresses[r], outer, units, inner, low, high, outside,
                   counts);
        for (Py_ssize_t u = 0; u < units; u++)
            shares[r * units + u] = (float)((double)counts[u] / values);
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(counts);
    PyBuffer_Release(&pointers);
    PyBuffer_Release(&out);
    return result;
}

PyDoc_STRVAR(openmp_address_doc,
    "openmp_address()\n--\n\n"
    "The address of the omp_get_max_threads this build calls (0 without OpenMP): the same as\n"
    "torch's where both use one OpenMP runtime.");

static PyObject *openmp_address(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(args))
{
#if defined(_OPENMP)
    return PyLong_FromVoidPtr((void *)&omp_get_max_threads);
#else
    return PyLong_FromLong(0);
#endif
}

static PyMethodDef methods[] = {
    {"reduce", reduce, METH_VARARGS, reduce_doc},
    {"count_units", count_units, METH_VARARGS, count_units_doc},
    {"openmp_address", openmp_address, METH_NOARGS, openmp_address_doc},
    {NULL, NULL, 0, NULL},
};

/* The calling convention's version, checked by dbgcli/torch/_stats.py: a build left from an
 * older checkout (an editable install not rebuilt) is then not used at all. */
#define INTERFACE 4

#if defined(_OPENMP)
#define OPENMP 1
#else
#define OPENMP 0
#endif

static int add_interface(PyObject *module)
{
    if (PyModule_AddIntConstant(module, "OPENMP", OPENMP) < 0)
        return -1;
    return PyModule_AddIntConstant(module, "INTERFACE", INTERFACE);
}

/* No state of its own: safe without the GIL on free-threaded builds. */
static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, add_interface},
#if defined(Py_GIL_DISABLED)
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fused", "One-pass statistics of float32 tensors.", 0, methods,
    slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fused(void) { return PyModuleDef_Init(&module); }
