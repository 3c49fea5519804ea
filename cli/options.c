/* options.c - the subcommands' option cursor over argv and the parsers of
 * option values (sizes, integers, reals), with the usage errors (exit 2). */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "help.h"

/* ------------------------------------------------------------ options */

int cli_usage_error(const cli_args *a, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", a->cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (try '%s --help')\n", a->cmd);
    return CLI_EXIT_USAGE;
}

/* The option names the parser compared the current argument with
 * (cli_opt_is): the options valid at this point, which an unknown option
 * is matched against.  One parse at a time, as cli_next_arg's name. */
static const char *known[64];
static size_t n_known;

/* Next argument: 1 for an option (a->opt set), 0 for a positional (in
 * *pos), -1 at the end. */
int cli_next_arg(cli_args *a, const char **pos)
{
    const char *s;
    n_known = 0;
    if (a->i >= a->argc)
        return -1;
    s = a->argv[a->i++];
    a->inline_val = NULL;
    if (s[0] == '-' && s[1] == '-' && s[2]) {
        static char name[64];
        const char *eq = strchr(s, '=');
        size_t len = eq ? (size_t)(eq - s) : strlen(s);
        if (len >= sizeof name)
            len = sizeof name - 1;
        memcpy(name, s, len);
        name[len] = '\0';
        a->opt = name;
        a->inline_val = eq ? eq + 1 : NULL;
        return 1;
    }
    if (s[0] == '-' && s[1] && s[1] != '-' && !s[2]) {   /* -o, -n */
        a->opt = s;
        return 1;
    }
    *pos = s;
    return 0;
}

int cli_opt_is(const cli_args *a, const char *name)
{
    size_t i = 0;
    while (i < n_known && strcmp(known[i], name))
        i++;
    if (i == n_known && n_known < sizeof known / sizeof known[0])
        known[n_known++] = name;
    return !strcmp(a->opt, name);
}

int cli_unknown_option(const cli_args *a)
{
    char hint[320];
    return cli_usage_error(a, "unknown option '%s'%s", a->opt,
                           cli_did_you_mean(hint, sizeof hint, a->opt, known,
                                            n_known));
}

/* The option's value; NULL after printing a usage error. */
const char *cli_opt_value(cli_args *a)
{
    if (a->inline_val)
        return a->inline_val;
    if (a->i >= a->argc) {
        cli_usage_error(a, "option %s needs a value", a->opt);
        return NULL;
    }
    return a->argv[a->i++];
}

int cli_flag(cli_args *a)
{
    if (a->inline_val)
        return cli_usage_error(a, "option %s takes no value (got '%s=%s')",
                               a->opt, a->opt, a->inline_val);
    return 0;
}

/* A decimal integer in [min, max]: digits only (no sign, no space). */
static int parse_uint(cli_args *a, unsigned long long min,
                      unsigned long long max, unsigned long long *out)
{
    const char *v = cli_opt_value(a);
    char *end;
    unsigned long long x;
    if (!v)
        return CLI_EXIT_USAGE;
    errno = 0;
    x = strtoull(v, &end, 10);
    if (errno || end == v || *end || v[0] < '0' || v[0] > '9' || x < min
        || x > max) {
        if (max == (unsigned long long)SIZE_MAX / 2)
            return cli_usage_error(a, "%s: '%s' is not an integer >= %llu",
                                   a->opt, v, min);
        return cli_usage_error(a, "%s: '%s' is not an integer in [%llu, "
                               "%llu]", a->opt, v, min, max);
    }
    *out = x;
    return 0;
}

int cli_parse_size(cli_args *a, size_t *out, size_t min)
{
    return cli_parse_range(a, out, min, SIZE_MAX / 2);
}

int cli_parse_range(cli_args *a, size_t *out, size_t min, size_t max)
{
    unsigned long long x;
    int rc = parse_uint(a, min, max, &x);
    if (!rc)
        *out = (size_t)x;
    return rc;
}

int cli_parse_u64(cli_args *a, uint64_t *out)
{
    unsigned long long x;
    int rc = parse_uint(a, 0, UINT64_MAX, &x);
    if (!rc)
        *out = (uint64_t)x;
    return rc;
}

int cli_parse_real(cli_args *a, double *out, double lo, double hi)
{
    const char *v = cli_opt_value(a);
    char *end;
    double x;
    if (!v)
        return CLI_EXIT_USAGE;
    errno = 0;
    x = strtod(v, &end);
    if (errno || end == v || *end || !(x >= lo && x <= hi))
        return cli_usage_error(a, "%s: '%s' is not a number in [%g, %g]",
                               a->opt, v, lo, hi);
    *out = x;
    return 0;
}
