/* The forward pass of bnnmip's compiled kernel, included by _kernel.c once per instruction set:
 * NAME(f) is f's name for that instruction set.  See _kernel.c and kernel.py. */

#ifndef PACKED_DOTS
/* out[j] = sum_k w[j * stride + k] in[k]: exact in int32 (|sum| <= stride * 255 * 128). */
static void NAME(dots)(const uint8_t *in, const int8_t *w, int32_t *out, int32_t width, int32_t stride)
{
    for (int32_t j = 0; j < width; j++) {
        const int8_t *row = w + (int64_t)j * stride;
        int32_t acc = 0;
        for (int32_t k = 0; k < stride; k++)
            acc += (int32_t)in[k] * (int32_t)row[k];
        out[j] = acc;
    }
}

/* dots of BLOCK rows at once (in and out `step` apart): each weight is loaded once for all of them. */
static void NAME(dots_block)(const uint8_t *in, int64_t step, const int8_t *w, int32_t *out, int32_t width,
                             int32_t stride)
{
    const uint8_t *in0 = in, *in1 = in + step, *in2 = in + 2 * step, *in3 = in + 3 * step;
    for (int32_t j = 0; j < width; j++) {
        const int8_t *row = w + (int64_t)j * stride;
        int32_t acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;
        for (int32_t k = 0; k < stride; k++) {
            int32_t v = row[k];
            acc0 += (int32_t)in0[k] * v;
            acc1 += (int32_t)in1[k] * v;
            acc2 += (int32_t)in2[k] * v;
            acc3 += (int32_t)in3[k] * v;
        }
        out[j] = acc0;
        out[step + j] = acc1;
        out[2 * step + j] = acc2;
        out[3 * step + j] = acc3;
    }
}

#endif

#ifndef QUANTIZE
#define QUANTIZE NAME(quantize)
/* Grid indices q = clamp(round(F x), 0, 255) of a float32 row, and the bound sum_k |F x_k - q_k|
 * <= (D + 2.001 u Y) (1 + 2 n u) (see kernel.py) with D = sum |y - q|, Y = sum |y|, y = fl(F x),
 * summed in float32 in LANES partial sums (the last factor covers any order).  D is taken against
 * the integers stored, so the bound holds whatever integers they are.  NaN if an x is. */
static double NAME(quantize)(const float *x, int32_t n, float factor, uint8_t *q)
{
    float dev[LANES] = {0}, mag[LANES] = {0};
    int32_t k = 0;
    for (; k + LANES <= n; k += LANES) {
        for (int l = 0; l < LANES; l++) {
            float y = x[k + l] * factor;
            float r = (y + ROUNDER) - ROUNDER;  /* nearest integer for |y| < 2^22 */
            r = r < 255.0f ? r : 255.0f;
            r = r > 0.0f ? r : 0.0f;  /* NaN -> 0 (y, and so the bound, stay NaN) */
            int32_t i = (int32_t)r;
            dev[l] += fabsf(y - (float)i);
            mag[l] += fabsf(y);
            q[k + l] = (uint8_t)i;
        }
    }
    double d = 0.0, m = 0.0;
    for (; k < n; k++) {
        float y = x[k] * factor;
        float r = (y + ROUNDER) - ROUNDER;
        r = r < 255.0f ? r : 255.0f;
        r = r > 0.0f ? r : 0.0f;
        int32_t i = (int32_t)r;
        d += fabsf(y - (float)i);
        m += fabsf(y);
        q[k] = (uint8_t)i;
    }
    for (int l = 0; l < LANES; l++) {
        d += dev[l];
        m += mag[l];
    }
    return (d + 2.001 * U32 * m) * (1.0 + 2.0 * n * U32);
}
#endif

/* The real first layer's bits from its integer products: 0 if a unit is within the row's tolerance
 * (or the tolerance is NaN or infinite: NaN or infinite inputs). */
static int NAME(first_layer)(const bnn_t *net, const int32_t *sums, double bound, uint8_t *bits)
{
    double tolerance = bound * net->tolerance_scale + net->tolerance_floor;
    int32_t near = 0;
    for (int32_t j = 0; j < net->width[0]; j++) {
        double margin = (double)sums[j] - net->target[j];
        near += fabs(margin) <= tolerance + net->slack[j];
        bits[j] = margin > 0.0;
    }
    return near == 0 && tolerance < INFINITY;
}

/* out = c + sum_j h_j A[:, j] (h_j = +-1, A padded to CLASS_BLOCK classes): a class block in
 * registers, four interleaved sums over the units. */
static void NAME(output)(const bnn_t *net, const uint8_t *bits, double *out)
{
    int32_t width = net->width[net->depth - 1], classes = net->n_classes;
    int32_t padded = (classes + CLASS_BLOCK - 1) / CLASS_BLOCK * CLASS_BLOCK;
    for (int32_t c0 = 0; c0 < classes; c0 += CLASS_BLOCK) {
        double acc[4][CLASS_BLOCK] = {{0}};
        for (int32_t j = 0; j < width; j++) {
            const double *a = net->out_weight + (int64_t)j * padded + c0;
            double h = 2.0 * bits[j] - 1.0;
            for (int32_t c = 0; c < CLASS_BLOCK; c++)
                acc[j % 4][c] += h * a[c];
        }
        for (int32_t c = c0; c < classes && c < c0 + CLASS_BLOCK; c++) {
            int32_t i = c - c0;
            out[c] = ((acc[0][i] + acc[1][i]) + (acc[2][i] + acc[3][i])) + net->out_bias[c];
        }
    }
}

/* Logits of n rows (BLOCK or 1) starting at x into out; ok[r] = 0 for a row left to the caller.
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
            bound[r] = QUANTIZE((const float *)xr, net->n_inputs, (float)net->factor, in + r * step);
    }
    for (int32_t l = 0; l < net->depth; l++) {
#ifdef PACKED_DOTS
        packed_dots(n, in, step, net->packed[l], sums, net->width[l], net->stride[l]);
#else
        if (n == BLOCK)
            NAME(dots_block)(in, step, net->weight[l], sums, net->width[l], net->stride[l]);
        else
            NAME(dots)(in, net->weight[l], sums, net->width[l], net->stride[l]);
#endif
        for (int r = 0; r < n; r++) {
            const int32_t *s = sums + r * step;
            uint8_t *z = bits + r * step;
            if (l == 0 && !net->binarized) {
                ok[r] = NAME(first_layer)(net, s, bound[r], z);
            } else {
                const int32_t *cut = net->cut[l];
                for (int32_t j = 0; j < net->width[l]; j++)
                    z[j] = s[j] >= cut[j];
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
#undef QUANTIZE
