/* help.c - what flowkit and flowc share to help a user: the known name to
 * suggest for a mistyped one, and a layer type's attribute reference. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "help.h"

/* ------------------------------------------------------------ suggestions */

static int dash(char c)
{
    return c == '-' || c == '_';
}

/* Equal once '_' is read as '-'. */
static int same_dashed(const char *a, const char *b)
{
    for (; *a && *b; a++, b++)
        if (*a != *b && !(dash(*a) && dash(*b)))
            return 0;
    return *a == *b;
}

/* The name without its leading dashes. */
static const char *bare(const char *s)
{
    while (*s == '-')
        s++;
    return s;
}

/* Is w one of c's dash-separated end words: c is "w-..." or "...-w"? */
static int end_word(const char *c, const char *w)
{
    size_t lc = strlen(c), lw = strlen(w);
    if (lc <= lw)
        return 0;
    return (!strncmp(c, w, lw) && c[lw] == '-')
           || (!strcmp(c + lc - lw, w) && c[lc - lw - 1] == '-');
}

long cli_suggest(const char *name, const char *const *cands, size_t n)
{
    char norm[FLOW_MAX_IDENT + 1];
    const char *best, **words;
    size_t len = strlen(name);
    if (strlen(bare(name)) < 2 || len > FLOW_MAX_IDENT)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (cands[i] && same_dashed(name, cands[i]))
            return (long)i;
    /* the edit distance between the words after the dashes, which would
     * otherwise widen the limit (--frob is not --rows), on the dashed
     * spelling, so that '_' costs nothing */
    for (size_t i = 0; i <= len; i++)
        norm[i] = name[i] == '_' ? '-' : name[i];
    if ((words = calloc(n ? n : 1, sizeof *words)) != NULL) {
        for (size_t i = 0; i < n; i++)
            words[i] = cands[i] ? bare(cands[i]) : NULL;
        best = flow_suggest(bare(norm), words, n);
        for (size_t i = 0; best && i < n; i++)
            if (words[i] == best) {
                free(words);
                return (long)i;
            }
        free(words);
    }
    if (strlen(bare(norm)) >= 3)
        for (size_t i = 0; i < n; i++)
            if (cands[i] && end_word(bare(cands[i]), bare(norm)))
                return (long)i;
    return -1;
}

const char *cli_did_you_mean(char *buf, size_t cap, const char *name,
                             const char *const *cands, size_t n)
{
    long k = cli_suggest(name, cands, n);
    if (cap)
        buf[0] = '\0';
    if (k >= 0)
        snprintf(buf, cap, "; did you mean '%s'?", cands[k]);
    return buf;
}

/* ------------------------------------------------------ layer reference */

static const char *type_name(flow_attr_type t)
{
    switch (t) {
    case FLOW_ATTR_INT: return "int";
    case FLOW_ATTR_REAL: return "real";
    case FLOW_ATTR_BOOL: return "bool";
    case FLOW_ATTR_STRING: return "string";
    case FLOW_ATTR_ENUM: return "enum";
    case FLOW_ATTR_INT_LIST: return "int list";
    case FLOW_ATTR_REAL_LIST: return "real list";
    case FLOW_ATTR_VARIANT: return "variant";
    }
    return "?";
}

/* One attribute table, indented; alternatives of variants below theirs. */
static void print_attrs(FILE *f, const flow_attr_spec *tab, int indent)
{
    for (size_t k = 0; tab && tab[k].name; k++) {
        const flow_attr_spec *a = &tab[k];
        char info[256];
        int n = snprintf(info, sizeof info, "%s", type_name(a->type));
        if (a->required)
            n += snprintf(info + n, sizeof info - (size_t)n, ", required");
        else if (a->type == FLOW_ATTR_INT)
            n += snprintf(info + n, sizeof info - (size_t)n, ", default %lld",
                          (long long)a->def_int);
        else if (a->type == FLOW_ATTR_BOOL)
            n += snprintf(info + n, sizeof info - (size_t)n, ", default %s",
                          a->def_int ? "true" : "false");
        else if (a->type == FLOW_ATTR_REAL)
            n += snprintf(info + n, sizeof info - (size_t)n, ", default %g",
                          a->def_real);
        else if (a->def_str && a->type != FLOW_ATTR_ENUM)
            n += snprintf(info + n, sizeof info - (size_t)n, ", default %s",
                          a->def_str);
        if (n > 0 && (size_t)n < sizeof info) {
            if (a->has_min && a->has_max)
                n += snprintf(info + n, sizeof info - (size_t)n,
                              ", in [%g, %g]", a->min, a->max);
            else if (a->has_min)
                n += snprintf(info + n, sizeof info - (size_t)n, ", >= %g",
                              a->min);
            else if (a->has_max)
                n += snprintf(info + n, sizeof info - (size_t)n, ", <= %g",
                              a->max);
        }
        if (n > 0 && (size_t)n < sizeof info && a->max_len)
            snprintf(info + n, sizeof info - (size_t)n, ", %zu..%zu items",
                     a->min_len, a->max_len);
        else if (n > 0 && (size_t)n < sizeof info && a->min_len)
            snprintf(info + n, sizeof info - (size_t)n, ", >= %zu items",
                     a->min_len);
        fprintf(f, "%*s%-14s %s\n%*s%14s %s\n", indent, "", a->name, info,
               indent, "", "", a->doc ? a->doc : "");
        if (a->type == FLOW_ATTR_ENUM && a->enum_values) {
            fprintf(f, "%*s%14s one of:", indent, "", "");
            for (size_t i = 0; a->enum_values[i]; i++)
                fprintf(f, " %s%s", a->enum_values[i],
                       !a->required && (int64_t)i == a->def_int
                           ? " (default)" : "");
            fputc('\n', f);
        }
        for (size_t i = 0; a->type == FLOW_ATTR_VARIANT && a->alternatives
                           && a->alternatives[i].name; i++) {
            const flow_variant_alt *alt = &a->alternatives[i];
            fprintf(f, "%*s%14s | %s%s: %s\n", indent, "", "", alt->name,
                   alt->bare_list ? " (also a bare list)" : "",
                   alt->doc ? alt->doc : "");
            print_attrs(f, alt->attrs, indent + 19);
        }
    }
}

int cli_layer_reference(const flow_ctx *ctx, const char *type, FILE *f)
{
    for (size_t i = 0; i < flow_plugin_count(ctx); i++) {
        const flow_plugin_info *p = flow_plugin_get(ctx, i);
        for (size_t j = 0; j < p->n_layers; j++) {
            const flow_layer_type *t = p->layers[j];
            if (strcmp(type, t->name))
                continue;
            fprintf(f, "%s: %s\nplugin: %s (%s)\nattributes:\n", t->name,
                    t->summary ? t->summary : "", p->name,
                    flow_plugin_file(ctx, i));
            if (!t->attrs || !t->attrs[0].name)
                fprintf(f, "  (none)\n");
            print_attrs(f, t->attrs, 2);
            return 0;
        }
    }
    return -1;
}

const char *cli_layer_did_you_mean(const flow_ctx *ctx, const char *type,
                                   char *buf, size_t cap)
{
    size_t n = 0, k = 0;
    const char **names;
    for (size_t i = 0; i < flow_plugin_count(ctx); i++)
        n += flow_plugin_get(ctx, i)->n_layers;
    if (cap)
        buf[0] = '\0';
    if (!(names = malloc((n ? n : 1) * sizeof *names)))
        return buf;
    for (size_t i = 0; i < flow_plugin_count(ctx); i++) {
        const flow_plugin_info *p = flow_plugin_get(ctx, i);
        for (size_t j = 0; j < p->n_layers; j++)
            names[k++] = p->layers[j]->name;
    }
    cli_did_you_mean(buf, cap, type, names, n);
    free(names);
    return buf;
}
