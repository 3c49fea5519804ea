/* progress.c - training progress on standard error and a reader of the
 * training history's records (cli/progress.h; docs/cli.md, "Progress"). */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "progress.h"

/* Redraws at most this often: fast enough to look live, slow enough that
 * a terminal over ssh is not flooded by thousands of steps per second. */
#define REDRAW_S 0.2

void cli_progress_init(cli_progress *p, int quiet, size_t log_every,
                       uint64_t step0)
{
    memset(p, 0, sizeof *p);
    p->tty = isatty(2);
    p->quiet = quiet;
    p->log_every = log_every;
    p->step0 = step0;
    p->t0 = cli_now_s();
    p->last_draw = -1;
}

/* "42s", "3m07s", "2h05m": short enough for one terminal line. */
static void fmt_eta(char *b, size_t n, double s)
{
    if (!isfinite(s) || s < 0)
        snprintf(b, n, "?");
    else if (s < 60)
        snprintf(b, n, "%.0fs", s);
    else if (s < 3600)
        snprintf(b, n, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
    else
        snprintf(b, n, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
}

void cli_progress_step(cli_progress *p, const cli_progress_at *at)
{
    double now, el, rate;
    if (p->quiet)
        return;
    now = cli_now_s();
    el = now - p->t0;
    rate = el > 0 ? (double)(at->step - p->step0) / el : 0;
    if (p->tty) {
        enum { W = 12 };    /* the whole line fits 80 columns */
        char eta[16];
        int fill;
        if (at->batch > 1 && p->last_draw >= 0
            && now - p->last_draw < REDRAW_S)
            return;
        p->last_draw = now;
        fill = at->batches ? (int)((double)W * (double)at->batch
                                   / (double)at->batches) : W;
        if (fill > W)
            fill = W;
        fmt_eta(eta, sizeof eta, rate > 0 ? (double)(at->total - at->step)
                / rate : NAN);
        fprintf(stderr, "\r\033[Kepoch %zu", at->epoch);
        if (at->epochs)
            fprintf(stderr, "/%zu", at->epochs);
        fprintf(stderr, " [%.*s%*s] %zu/%zu loss %.4f %.*f steps/s ETA %s",
                fill, "============", W - fill, "", at->batch, at->batches,
                at->loss, rate < 100 ? 1 : 0, rate, eta);
        fflush(stderr);
        p->drawn = 1;
    } else if (p->log_every && at->step % p->log_every == 0) {
        fprintf(stderr, "step %llu/%zu epoch %zu loss %.5f steps/s %.1f "
                "time %.1fs\n", (unsigned long long)at->step, at->total,
                at->epoch, at->loss, rate, el);
    }
}

void cli_progress_clear(cli_progress *p)
{
    if (p->drawn) {
        fputs("\r\033[K", stderr);
        p->drawn = 0;
    }
}

void cli_progress_epoch(cli_progress *p, size_t epoch, uint64_t step,
                        size_t total, double loss, int has_valid,
                        double valid, double nfe)
{
    if (p->quiet)
        return;
    cli_progress_clear(p);
    p->last_draw = -1;
    fprintf(stderr, "epoch %zu step %llu/%zu loss %.5f", epoch,
            (unsigned long long)step, total, loss);
    if (has_valid)
        fprintf(stderr, " valid_loglik %.5f", valid);
    if (nfe >= 0)
        fprintf(stderr, " nfe %.4g", nfe);
    fprintf(stderr, " time %.1fs\n", cli_now_s() - p->t0);
}

static const char *skip_ws(const char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    return s;
}

/* "key": value, where value is a number, null, true or false */
static int read_pair(const char **p, cli_hist_rec *r)
{
    const char *s = skip_ws(*p), *e;
    size_t len;
    char *end;
    if (*s != '"' || !(e = strchr(s + 1, '"')) || memchr(s + 1, '\\',
                                                          (size_t)(e - s)))
        return -1;
    len = (size_t)(e - s - 1);
    if (len >= CLI_HIST_KEY_LEN || r->n == CLI_HIST_MAX_KEYS)
        return -1;
    memcpy(r->key[r->n], s + 1, len);
    r->key[r->n][len] = '\0';
    s = skip_ws(e + 1);
    if (*s++ != ':')
        return -1;
    s = skip_ws(s);
    if (!strncmp(s, "null", 4)) {
        r->val[r->n] = NAN;
        s += 4;
    } else if (!strncmp(s, "true", 4)) {
        r->val[r->n] = 1;
        s += 4;
    } else if (!strncmp(s, "false", 5)) {
        r->val[r->n] = 0;
        s += 5;
    } else {
        r->val[r->n] = strtod(s, &end);
        if (end == s)
            return -1;
        s = end;
    }
    r->n++;
    *p = s;
    return 0;
}

int cli_hist_next(const char **p, cli_hist_rec *r)
{
    const char *s = skip_ws(*p);
    r->n = 0;
    if (*s == '[' || *s == ',')
        s = skip_ws(s + 1);
    if (*s == ']')
        return 0;
    if (*s++ != '{')
        return -1;
    s = skip_ws(s);
    while (*s != '}') {
        if (read_pair(&s, r) != 0)
            return -1;
        s = skip_ws(s);
        if (*s == ',')
            s++;
        else if (*s != '}')
            return -1;
    }
    *p = s + 1;
    return 1;
}

double cli_hist_get(const cli_hist_rec *r, const char *key)
{
    for (size_t i = 0; i < r->n; i++)
        if (!strcmp(r->key[i], key))
            return r->val[i];
    return NAN;
}
