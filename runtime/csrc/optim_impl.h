/* Optimizer updates over flat parameter buffers for one element type (REAL, names ending in SUFFIX):
 * one pass over memory where NumPy makes a dozen (each of its in-place ops reads and writes the whole
 * buffer). Elements [begin, end) are one thread's share; the scalars come in double. */

/* Adam in Keras' form: m += (g - m)(1 - beta_1); v += (g^2 - v)(1 - beta_2);
 * p -= alpha m / (sqrt(v) + epsilon), alpha holding the learning rate and both bias corrections. */
void NAME(adam_update)(long begin, long end, REAL *p, const REAL *g, REAL *m, REAL *v, double alpha,
                       double beta_1, double beta_2, double epsilon) {
    const REAL a = (REAL)alpha, keep_1 = (REAL)(1.0 - beta_1), keep_2 = (REAL)(1.0 - beta_2), eps = (REAL)epsilon;
    REAL *restrict params = p, *restrict first = m, *restrict second = v;
    const REAL *restrict grad = g;
    for (long i = begin; i < end; i++) {
        REAL mi = first[i] + (grad[i] - first[i]) * keep_1;
        REAL vi = second[i] + (grad[i] * grad[i] - second[i]) * keep_2;
        first[i] = mi;
        second[i] = vi;
        params[i] -= a * mi / (sqrt(vi) + eps);
    }
}

/* SGD with momentum in Keras' form: m = momentum m - lr g; p += m, or with Nesterov's correction
 * p += momentum m - lr g. */
void NAME(sgd_momentum_update)(long begin, long end, REAL *p, const REAL *g, REAL *m, double lr, double momentum,
                               int nesterov) {
    const REAL rate = (REAL)lr, mu = (REAL)momentum;
    REAL *restrict params = p, *restrict velocity = m;
    const REAL *restrict grad = g;
    for (long i = begin; i < end; i++) {
        REAL step = rate * grad[i];
        REAL mi = mu * velocity[i] - step;
        velocity[i] = mi;
        params[i] += nesterov ? mu * mi - step : mi;
    }
}

/* RMSprop in Keras' form, not centered: v = rho v + (1 - rho) g^2; step = lr g / sqrt(v + epsilon);
 * p -= step, or with momentum m = momentum m + step; p -= m (m NULL: no momentum). */
void NAME(rmsprop_update)(long begin, long end, REAL *p, const REAL *g, REAL *v, REAL *m, double lr, double rho,
                          double epsilon, double momentum) {
    const REAL rate = (REAL)lr, keep = (REAL)rho, fresh = (REAL)(1.0 - rho), eps = (REAL)epsilon;
    const REAL mu = (REAL)momentum;
    REAL *restrict params = p, *restrict second = v;
    const REAL *restrict grad = g;
    for (long i = begin; i < end; i++) {
        REAL vi = keep * second[i] + fresh * grad[i] * grad[i];
        second[i] = vi;
        REAL step = rate * grad[i] / sqrt(vi + eps);
        if (m) {
            m[i] = mu * m[i] + step;
            step = m[i];
        }
        params[i] -= step;
    }
}
