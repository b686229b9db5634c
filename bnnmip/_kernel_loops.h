/* The forward pass of bnnmip's compiled kernel, included by _kernel.c once per instruction set:
 * NAME(f) is f's name for that instruction set, PACKED_DOTS and QUANTIZE its products and input
 * quantizer.  See _kernel.c and kernel.py. */

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
    int64_t padded = (classes + CLASS_BLOCK - 1) / CLASS_BLOCK * CLASS_BLOCK;
    for (int32_t c0 = 0; c0 < classes; c0 += CLASS_BLOCK) {
        double s0[CLASS_BLOCK] = {0}, s1[CLASS_BLOCK] = {0}, s2[CLASS_BLOCK] = {0}, s3[CLASS_BLOCK] = {0};
        const double *a = net->out_weight + c0;
        int32_t j = 0;
        for (; j + 4 <= width; j += 4) {
            double h0 = 2.0 * bits[j] - 1.0, h1 = 2.0 * bits[j + 1] - 1.0;
            double h2 = 2.0 * bits[j + 2] - 1.0, h3 = 2.0 * bits[j + 3] - 1.0;
            for (int c = 0; c < CLASS_BLOCK; c++) {
                s0[c] += h0 * a[j * padded + c];
                s1[c] += h1 * a[(j + 1) * padded + c];
                s2[c] += h2 * a[(j + 2) * padded + c];
                s3[c] += h3 * a[(j + 3) * padded + c];
            }
        }
        for (; j < width; j++) {
            double h = 2.0 * bits[j] - 1.0;
            for (int c = 0; c < CLASS_BLOCK; c++)
                s0[c] += h * a[j * padded + c];
        }
        for (int32_t c = c0; c < classes && c < c0 + CLASS_BLOCK; c++) {
            int32_t i = c - c0;
            out[c] = ((s0[i] + s1[i]) + (s2[i] + s3[i])) + net->out_bias[c];
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
        PACKED_DOTS(n, in, step, net->packed[l], sums, net->width[l], net->stride[l]);
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
