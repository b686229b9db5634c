/* bnnmip's compiled forward kernel: every unit of a binarized network decided in exact integer
 * arithmetic (see bnnmip/kernel.py for the mathematics and the Python side).
 *
 * Rows go through the network four at a time (each weight loaded once for the four): their inputs become bytes (the grid index of a real input,
 * or the bit of an input binarization), every layer is a set of int8 x uint8 dot products summed
 * in int32 (exact), compared with an integer threshold, and the logits are summed in float64.  A
 * real first layer is decided by comparing its integer product A with T = F theta, which is exact
 * whenever |A - T| exceeds the row's rounding tolerance; a row with a unit inside it, or with a
 * NaN or infinite input, is flagged and its logits left to the caller.
 *
 * A Python module with one function, logits(net, x, is_double, out, flags): net is the address of a
 * bnn_t that kernel.py builds with ctypes, the arrays are buffers; the GIL is released meanwhile.
 * With GCC on x86-64 the pass is compiled for several instruction sets and the best one is picked
 * at the first call (AVX-512 VNNI does 64 byte products an instruction).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define X86 1
#include <immintrin.h>
#else
#define X86 0
#endif

#define U32 5.9604644775390625e-08 /* 2^-24 */
#define LANES 16 /* partial sums of the input bound */
#define ROUNDER 12582912.0f /* 1.5 * 2^23: (y + ROUNDER) - ROUNDER rounds y to an integer */
#define BLOCK 4 /* rows that go through the network together */
#define CLASS_BLOCK 8 /* logits summed together */

typedef struct {
    int32_t depth;                 /* hidden layers */
    int32_t n_inputs;
    int32_t binarized;             /* 1: input binarization, then integer layers only */
    int32_t n_classes;
    const int32_t *width;          /* [depth] units of each layer */
    const int32_t *stride;         /* [depth] padded fan-in of each layer (a multiple of 64) */
    const int8_t *const *packed;   /* [depth] weights as [stride / 4][width padded to 16][4], zero padded */
    const int32_t *const *cut;     /* [depth] integer layers: on iff the sum of w b >= cut */
    const double *target;          /* real first layer: T_j = F theta_j */
    const double *slack;           /* real first layer: the float64 rounding of T_j */
    double factor;                 /* F: an input x is read as the grid index F x */
    double tolerance_scale;        /* max |w| (1 + 2^-40): turns the input bound into a unit bound */
    double tolerance_floor;        /* n F 2^-149: float32 underflow */
    const int8_t *direction;       /* input binarization: d_j, theta_j */
    const double *ib_threshold;
    const double *out_weight;      /* width[depth - 1] x n_classes padded to CLASS_BLOCK */
    const double *out_bias;
} bnn_t;

/* Input bits z_k = [d_k x_k >= theta_k] (x float32 or float64); 0 if a value is NaN or infinite. */
static int binarize(const bnn_t *net, const void *x, int is_double, uint8_t *z)
{
    int finite = 1;
    for (int32_t k = 0; k < net->n_inputs; k++) {
        double v = is_double ? ((const double *)x)[k] : (double)((const float *)x)[k];
        finite &= isfinite(v) != 0;
        z[k] = (net->direction[k] > 0 ? v : -v) >= net->ib_threshold[k];
    }
    return finite;
}


/* Grid indices q = clamp(round(F x), 0, 255) of x[k..n) and the bound of sum_k |F x_k - q_k| (see
 * kernel.py) given the partial sums d = sum |y - q| and m = sum |y| (y = fl(F x)) of x[0..k):
 * (D + 2.001 u Y) (1 + 2 n u), the last factor for the rounding of the float sums in any order.  D
 * is taken against the integers stored, so the bound holds whatever integers they are; NaN if an x is. */
static double quantize_tail(const float *x, int32_t k, int32_t n, float factor, uint8_t *q, double d, double m)
{
    for (; k < n; k++) {
        float y = x[k] * factor;
        float r = (y + ROUNDER) - ROUNDER;  /* nearest integer for |y| < 2^22 */
        r = r < 255.0f ? r : 255.0f;
        r = r > 0.0f ? r : 0.0f;  /* NaN -> 0 (y, and so the bound, stay NaN) */
        int32_t i = (int32_t)r;
        d += fabsf(y - (float)i);
        m += fabsf(y);
        q[k] = (uint8_t)i;
    }
    return (d + 2.001 * U32 * m) * (1.0 + 2.0 * n * U32);
}

typedef void (*rows_fn)(const bnn_t *, const char *, size_t, int, int, double *, int *, uint8_t *, uint8_t *,
                        int32_t *, int64_t);

/* The forward pass for AVX-512 VNNI and for AVX2, picked at the first call by what the CPU
 * supports (GCC's target_clones would pick by CPU model, which a virtual machine may hide).  Other
 * CPUs and compilers get neither: kernel.py then leaves every batch to the numpy path, which is
 * faster than this code would be without vector instructions. */
#if X86
#pragma GCC push_options
#pragma GCC target("avx2,fma")

/* packed_dots (_kernel_loops.h) in AVX2: vpmaddubsw multiplies bytes into pairs of int16 (|q w| +
 * |q w| <= 510 for |w| <= 1: no saturation), vpmaddwd adds the pairs into int32. */
#define VEC __m256i
#define UNITS 8
#define VZERO() _mm256_setzero_si256()
#define VLOAD(p) _mm256_loadu_si256((const __m256i *)(const void *)(p))
#define VSET1(v) _mm256_set1_epi32(v)
#define VDOT(acc, x, w) _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w), _mm256_set1_epi16(1)))
#define VSTORE(p, v) _mm256_storeu_si256((__m256i *)(void *)(p), v)

/* quantize_tail (above) eight inputs at a time: a NaN y gives min(NaN, 255) = 255, and a NaN bound. */
static double quantize_avx2(const float *x, int32_t n, float factor, uint8_t *q)
{
    __m256 f = _mm256_set1_ps(factor), top = _mm256_set1_ps(255.0f), zero = _mm256_setzero_ps();
    __m256 sign = _mm256_set1_ps(-0.0f), dev = _mm256_setzero_ps(), mag = _mm256_setzero_ps();
    int32_t k = 0;
    for (; k + 8 <= n; k += 8) {
        __m256 y = _mm256_mul_ps(_mm256_loadu_ps(x + k), f);
        __m256 r = _mm256_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256i i = _mm256_cvttps_epi32(_mm256_max_ps(_mm256_min_ps(r, top), zero));
        dev = _mm256_add_ps(dev, _mm256_andnot_ps(sign, _mm256_sub_ps(y, _mm256_cvtepi32_ps(i))));
        mag = _mm256_add_ps(mag, _mm256_andnot_ps(sign, y));
        int32_t lanes[8];
        _mm256_storeu_si256((__m256i *)(void *)lanes, i);
        for (int l = 0; l < 8; l++)
            q[k + l] = (uint8_t)lanes[l];
    }
    float dl[8], ml[8];
    _mm256_storeu_ps(dl, dev);
    _mm256_storeu_ps(ml, mag);
    double d = 0.0, m = 0.0;
    for (int l = 0; l < 8; l++) {
        d += dl[l];
        m += ml[l];
    }
    return quantize_tail(x, k, n, factor, q, d, m);
}

#define ISA avx2
#include "_kernel_loops.h"
#undef ISA
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni")

/* packed_dots (_kernel_loops.h) in AVX-512 VNNI: vpdpbusd adds four byte products into each of 16 units. */
#define VEC __m512i
#define UNITS 16
#define VZERO() _mm512_setzero_si512()
#define VLOAD(p) _mm512_loadu_si512((const void *)(p))
#define VSET1(v) _mm512_set1_epi32(v)
#define VDOT(acc, x, w) _mm512_dpbusd_epi32(acc, x, w)
#define VSTORE(p, v) _mm512_storeu_si512((void *)(p), v)

/* quantize_tail (above) sixteen inputs at a time: a NaN y gives min(NaN, 255) = 255, and a NaN bound. */
static double quantize_vnni(const float *x, int32_t n, float factor, uint8_t *q)
{
    __m512 f = _mm512_set1_ps(factor), top = _mm512_set1_ps(255.0f), zero = _mm512_setzero_ps();
    __m512 dev = _mm512_setzero_ps(), mag = _mm512_setzero_ps();
    int32_t k = 0;
    for (; k + 16 <= n; k += 16) {
        __m512 y = _mm512_mul_ps(_mm512_loadu_ps(x + k), f);
        __m512 r = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m512i i = _mm512_cvttps_epi32(_mm512_max_ps(_mm512_min_ps(r, top), zero));
        dev = _mm512_add_ps(dev, _mm512_abs_ps(_mm512_sub_ps(y, _mm512_cvtepi32_ps(i))));
        mag = _mm512_add_ps(mag, _mm512_abs_ps(y));
        _mm_storeu_si128((__m128i *)(void *)(q + k), _mm512_cvtepi32_epi8(i));
    }
    double d = _mm512_reduce_add_ps(dev), m = _mm512_reduce_add_ps(mag);
    return quantize_tail(x, k, n, factor, q, d, m);
}

#define ISA vnni
#include "_kernel_loops.h"
#undef ISA
#pragma GCC pop_options
#endif

static const char *instruction_set = "none";

/* The best forward pass the CPU supports (NULL: none), or AVX2 if $BNNMIP_KERNEL says "avx2" (so
 * that tests check both versions on one machine). */
static rows_fn pick(void)
{
#if X86
    const char *cap = getenv("BNNMIP_KERNEL");
    int most = cap != NULL && strcmp(cap, "avx2") == 0 ? 1 : 2;
    __builtin_cpu_init();
    if (most >= 2 && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vl")) {
        instruction_set = "AVX-512 VNNI";
        return rows_through_vnni;
    }
    if (most >= 1 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        instruction_set = "AVX2";
        return rows_through_avx2;
    }
#endif
    return NULL;
}

static rows_fn rows_through = NULL;  /* a benign race: every thread stores the same pointer */
static int picked = 0;

static rows_fn forward_pass(void)
{
    if (!picked) {
        rows_through = pick();
        picked = 1;
    }
    return rows_through;
}

/* Logits of `rows` rows of `x` (float32, or float64 with input binarization when is_double) into
 * `out` (rows x n_classes); flags[r] = 1 for a row left to the caller.  Returns the number of
 * flagged rows, or -1 if out of memory. */
static int64_t bnn_logits(const bnn_t *net, const void *x, int32_t is_double, int64_t rows, double *out, uint8_t *flags)
{
    rows_fn pass = forward_pass();
    if (pass == NULL)
        return -3;
    int64_t step = net->n_inputs;
    for (int32_t l = 0; l < net->depth; l++) {
        int32_t units = (net->width[l] + 31) / 32 * 32;  /* packed_dots writes whole blocks */
        step = units > step ? units : step;
        step = net->stride[l] > step ? net->stride[l] : step;
    }
    uint8_t *a = calloc((size_t)(BLOCK * step), 1), *b = calloc((size_t)(BLOCK * step), 1);
    int32_t *sums = malloc(sizeof(int32_t) * (size_t)(BLOCK * step));
    if (a == NULL || b == NULL || sums == NULL) {
        free(a);
        free(b);
        free(sums);
        return -1;
    }
    int64_t flagged = 0;
    size_t row_bytes = (size_t)net->n_inputs * (is_double ? sizeof(double) : sizeof(float));
    for (int64_t r = 0; r < rows;) {
        int n = rows - r >= BLOCK ? BLOCK : (int)(rows - r), ok[BLOCK];
        for (int i = 0; i < BLOCK; i++)
            ok[i] = 1;
        pass(net, (const char *)x + r * (int64_t)row_bytes, row_bytes, is_double, n,
                     out + r * net->n_classes, ok, a, b, sums, step);
        for (int i = 0; i < n; i++) {
            flags[r + i] = !ok[i];
            flagged += !ok[i];
        }
        r += n;
    }
    free(a);
    free(b);
    free(sums);
    return flagged;
}

/* logits(net, x, is_double, out, flags) -> number of flagged rows (rows = len(flags)). */
static PyObject *py_logits(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "logits(net, x, is_double, out, flags)");
        return NULL;
    }
    const bnn_t *net = PyLong_AsVoidPtr(args[0]);
    int is_double = PyObject_IsTrue(args[2]);
    if (net == NULL || is_double < 0)
        return NULL;
    Py_buffer x, out, flags;
    if (PyObject_GetBuffer(args[1], &x, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[3], &out, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&x);
        return NULL;
    }
    if (PyObject_GetBuffer(args[4], &flags, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&x);
        PyBuffer_Release(&out);
        return NULL;
    }
    int64_t rows = flags.len, flagged = -2;
    if (x.len == rows * net->n_inputs * (is_double ? 8 : 4) && out.len == rows * net->n_classes * 8) {
        Py_BEGIN_ALLOW_THREADS
        flagged = bnn_logits(net, x.buf, is_double, rows, (double *)out.buf, (uint8_t *)flags.buf);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    PyBuffer_Release(&flags);
    if (flagged == -1)
        return PyErr_NoMemory();
    if (flagged == -2) {
        PyErr_SetString(PyExc_ValueError, "logits: buffer sizes do not match the network");
        return NULL;
    }
    if (flagged == -3) {
        PyErr_SetString(PyExc_RuntimeError, "logits: no forward pass for this CPU (see instruction_set())");
        return NULL;
    }
    return PyLong_FromLongLong(flagged);
}

/* instruction_set() -> the name of the instruction set the forward pass uses. */
static PyObject *py_instruction_set(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    forward_pass();
    return PyUnicode_FromString(instruction_set);
}

static PyMethodDef methods[] = {
    {"instruction_set", py_instruction_set, METH_NOARGS, "The instruction set the forward pass uses."},
    {"logits", (PyCFunction)(void (*)(void))py_logits, METH_FASTCALL, "Logits of a batch (see bnnmip/kernel.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernel", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernel(void)
{
    return PyModule_Create(&module);
}
