/* The forward pass of bnnmip's compiled kernel, included by _kernel.c once per instruction set ISA
 * (avx2, vnni): NAME(f) is f's name for it, quantize_ISA its input quantizer, and VEC (UNITS int32
 * lanes), VZERO, VLOAD, VSET1, VDOT (add four byte products into each lane) and VSTORE its vector
 * operations.  See _kernel.c and kernel.py. */

#define PASTE(a, b) a##_##b
#define WITH(f, isa) PASTE(f, isa)
#define NAME(f) WITH(f, ISA)

/* The sums of units u.. (2 UNITS of them, or UNITS if not `two`) for n rows (at most BLOCK), with as many
 * independent accumulators; each weight vector is loaded once for all the rows. */
static inline __attribute__((always_inline)) void NAME(unit_block)(int n, const uint8_t *in, int64_t step,
                                                                   const int8_t *w, int64_t padded, int32_t groups,
                                                                   int32_t *sums, const int two)
{
    VEC acc[BLOCK][2];
    for (int r = 0; r < BLOCK; r++)
        acc[r][0] = acc[r][1] = VZERO();
    for (int32_t g = 0; g < groups; g++, w += padded * 4) {
        VEC w0 = VLOAD(w), w1 = two ? VLOAD(w + 4 * UNITS) : w0;
        for (int r = 0; r < BLOCK; r++) {
            if (r < n) {
                int32_t four;
                memcpy(&four, in + r * step + 4 * g, 4);
                VEC x = VSET1(four);
                acc[r][0] = VDOT(acc[r][0], x, w0);
                if (two)
                    acc[r][1] = VDOT(acc[r][1], x, w1);
            }
        }
    }
    for (int r = 0; r < n; r++) {
        VSTORE(sums + r * step, acc[r][0]);
        if (two)
            VSTORE(sums + r * step + UNITS, acc[r][1]);
    }
}

/* sums[r * step + j] = sum_k w_jk in_r[k] for n rows (at most BLOCK), from weights packed as
 * [stride / 4][width padded to 16][4] (four consecutive inputs of a unit side by side). */
static void NAME(packed_dots)(int n, const uint8_t *in, int64_t step, const int8_t *packed, int32_t *sums,
                              int32_t width, int32_t stride)
{
    int32_t padded = (width + 15) / 16 * 16, groups = stride / 4, u = 0;
    for (; u + 2 * UNITS <= padded; u += 2 * UNITS)
        NAME(unit_block)(n, in, step, packed + (int64_t)u * 4, padded, groups, sums + u, 1);
    for (; u < padded; u += UNITS)
        NAME(unit_block)(n, in, step, packed + (int64_t)u * 4, padded, groups, sums + u, 0);
}

/* The real first layer's bits from its integer products: 0 if a unit is within the row's tolerance
 * (or the tolerance is NaN or infinite: NaN or infinite inputs). */
static int NAME(first_layer)(const bnn_t *net, const int32_t *restrict sums, double bound, uint8_t *restrict bits)
{
    double tolerance = bound * net->tolerance_scale + net->tolerance_floor;
    const double *restrict target = net->target, *restrict slack = net->slack;
    int32_t near = 0, width = net->width[0];
    for (int32_t j = 0; j < width; j++) {
        double margin = (double)sums[j] - target[j];
        near += fabs(margin) <= tolerance + slack[j];
        bits[j] = margin > 0.0;
    }
    return near == 0 && tolerance < INFINITY;
}

/* Bits of an integer layer: on where the sum reaches the cut. */
static void NAME(integer_layer)(const int32_t *restrict sums, const int32_t *restrict cut, int32_t width,
                                uint8_t *restrict bits)
{
    for (int32_t j = 0; j < width; j++)
        bits[j] = sums[j] >= cut[j];
}

/* out = c + sum_j h_j A[:, j] (h_j = +-1; A by unit, its classes padded to CLASS_BLOCK): the sums of
 * a class block in registers, four interleaved over the units. */
static void NAME(output)(const bnn_t *net, const uint8_t *restrict bits, double *restrict out)
{
    int32_t width = net->width[net->depth - 1], classes = net->n_classes;
    int64_t padded = (classes + CLASS_BLOCK - 1) / CLASS_BLOCK * CLASS_BLOCK;
    for (int32_t c0 = 0; c0 < classes; c0 += CLASS_BLOCK) {
        double s0[CLASS_BLOCK] = {0}, s1[CLASS_BLOCK] = {0}, s2[CLASS_BLOCK] = {0}, s3[CLASS_BLOCK] = {0};
        const double *restrict a = net->out_weight + c0;
        int32_t j = 0;
        for (; j + 4 <= width; j += 4) {
            const double *restrict r0 = a + j * padded, *restrict r1 = r0 + padded;
            const double *restrict r2 = r1 + padded, *restrict r3 = r2 + padded;
            double h0 = bits[j] ? 1.0 : -1.0, h1 = bits[j + 1] ? 1.0 : -1.0;
            double h2 = bits[j + 2] ? 1.0 : -1.0, h3 = bits[j + 3] ? 1.0 : -1.0;
            for (int c = 0; c < CLASS_BLOCK; c++) {
                s0[c] += h0 * r0[c];
                s1[c] += h1 * r1[c];
                s2[c] += h2 * r2[c];
                s3[c] += h3 * r3[c];
            }
        }
        for (; j < width; j++) {
            const double *restrict r0 = a + j * padded;
            double h0 = bits[j] ? 1.0 : -1.0;
            for (int c = 0; c < CLASS_BLOCK; c++)
                s0[c] += h0 * r0[c];
        }
        for (int32_t c = c0; c < classes && c < c0 + CLASS_BLOCK; c++) {
            int32_t i = c - c0;
            out[c] = ((s0[i] + s1[i]) + (s2[i] + s3[i])) + net->out_bias[c];
        }
    }
}

/* Logits of n rows (at most BLOCK) starting at x into out; ok[r] = 0 for a row left to the caller.
 * The buffers a, b (bytes) and sums (int32) hold BLOCK rows `step` apart. */
static void NAME(rows_through)(const bnn_t *net, const char *x, size_t row_bytes, int is_double, int n,
                               double *out, int *ok, uint8_t *a, uint8_t *b, int32_t *sums, int64_t step)
{
    uint8_t *in = a, *bits = b;
    double bound[BLOCK];
    for (int r = 0; r < n; r++) {
        const char *xr = x + r * (int64_t)row_bytes;
        if (net->binarized)
            ok[r] = binarize(net, xr, is_double, in + r * step);
        else
            bound[r] = NAME(quantize)((const float *)xr, net->n_inputs, (float)net->factor, in + r * step);
    }
    for (int32_t l = 0; l < net->depth; l++) {
        NAME(packed_dots)(n, in, step, net->packed[l], sums, net->width[l], net->stride[l]);
        for (int r = 0; r < n; r++) {
            const int32_t *s = sums + r * step;
            uint8_t *z = bits + r * step;
            if (l == 0 && !net->binarized) {
                ok[r] = NAME(first_layer)(net, s, bound[r], z);
            } else {
                NAME(integer_layer)(s, net->cut[l], net->width[l], z);
            }
        }
        uint8_t *t = in;
        in = bits;
        bits = t;
    }
    for (int r = 0; r < n; r++)
        if (ok[r])
            NAME(output)(net, in + r * step, out + r * net->n_classes);
}

#undef NAME
#undef WITH
#undef PASTE
#undef VEC
#undef UNITS
#undef VZERO
#undef VLOAD
#undef VSET1
#undef VDOT
#undef VSTORE
