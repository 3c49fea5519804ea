/* attrs.c - a spec's values against a plugin's flow_attr_spec table (types,
 * ranges, lists, enums, variants, defaults) into resolved attribute arrays. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "compiler.h"

size_t attr_count(const flow_attr_spec *tab)
{
    size_t n = 0;
    while (tab && tab[n].name)
        n++;
    return n;
}

const char *attr_value_desc(flow_compilation *c, const value *v)
{
    switch (v->kind) {
    case V_INT: return arena_printf(&c->mem, "the integer %lld",
                                    (long long)v->i);
    case V_REAL: return arena_printf(&c->mem, "the real %g", v->r);
    case V_STR: return "a string";
    case V_IDENT: return arena_printf(&c->mem, "'%s'", v->s);
    case V_LIST: return "a list";
    case V_CALL: return arena_printf(&c->mem, "'%s(...)'", v->s);
    }
    return "a value";
}

/* "one of: a, b, c" for enums and variants. */
static const char *choices(flow_compilation *c, const flow_attr_spec *s)
{
    char buf[512];
    size_t used = 0;
    buf[0] = '\0';
    if (s->type == FLOW_ATTR_ENUM && s->enum_values)
        for (size_t i = 0; s->enum_values[i] && used < sizeof buf; i++)
            used += (size_t)snprintf(buf + used, sizeof buf - used, "%s%s",
                                     i ? ", " : "", s->enum_values[i]);
    if (s->type == FLOW_ATTR_VARIANT && s->alternatives)
        for (size_t i = 0; s->alternatives[i].name && used < sizeof buf;
             i++) {
            const flow_variant_alt *a = &s->alternatives[i];
            size_t na = attr_count(a->attrs);
            used += (size_t)snprintf(buf + used, sizeof buf - used, "%s%s",
                                     i ? ", " : "", a->name);
            for (size_t j = 0; j < na && used < sizeof buf; j++)
                used += (size_t)snprintf(buf + used, sizeof buf - used,
                                         "%s%s%s", j ? ", " : "(",
                                         a->attrs[j].name,
                                         j + 1 == na ? ")" : "");
            if (a->bare_list && used < sizeof buf)
                used += (size_t)snprintf(buf + used, sizeof buf - used,
                                         ", [...]");
        }
    return arena_strdup(&c->mem, buf);
}

static const char *type_desc(flow_compilation *c, const flow_attr_spec *s)
{
    switch (s->type) {
    case FLOW_ATTR_INT: return "an integer";
    case FLOW_ATTR_REAL: return "a number";
    case FLOW_ATTR_BOOL: return "true or false";
    case FLOW_ATTR_STRING: return "a string";
    case FLOW_ATTR_INT_LIST: return "a list of integers";
    case FLOW_ATTR_REAL_LIST: return "a list of numbers";
    case FLOW_ATTR_ENUM:
    case FLOW_ATTR_VARIANT:
        return arena_printf(&c->mem, "one of: %s", choices(c, s));
    }
    return "a value";
}

/* An identifier where a number is needed: an undefined constant. */
static int undefined(flow_compilation *c, const value *v)
{
    const char *best = c->suggest ? c->suggest(c->suggest_ctx, v->s) : NULL;
    char help[FLOW_MAX_IDENT + 32];
    if (best)
        snprintf(help, sizeof help, "did you mean '%s'?", best);
    diag_error(c, "F0100", v->loc, best ? help : NULL, "undefined name '%s'",
               v->s);
    return 1;
}

static int mismatch(flow_compilation *c, const value *v,
                    const flow_attr_spec *s, const char *what)
{
    if (v->kind == V_IDENT && s->type != FLOW_ATTR_ENUM
        && s->type != FLOW_ATTR_VARIANT && s->type != FLOW_ATTR_BOOL)
        return undefined(c, v);
    diag_error(c, "F0200", v->loc, NULL, "attribute '%s' of %s expects %s, "
               "got %s", s->name, what, type_desc(c, s),
               attr_value_desc(c, v));
    return 1;
}

/* Inclusive range check of one number; `item` >= 0 names a list item. */
static int in_range(flow_compilation *c, const value *v,
                    const flow_attr_spec *s, double x, long item)
{
    char rng[96], which[48] = "";
    if ((!s->has_min || x >= s->min) && (!s->has_max || x <= s->max))
        return 1;
    if (s->has_min && s->has_max)
        snprintf(rng, sizeof rng, "in [%g, %g]", s->min, s->max);
    else if (s->has_min)
        snprintf(rng, sizeof rng, ">= %g", s->min);
    else
        snprintf(rng, sizeof rng, "<= %g", s->max);
    if (item >= 0)
        snprintf(which, sizeof which, "item %ld (%g)", item, x);
    else
        snprintf(which, sizeof which, "value %g", x);
    diag_error(c, "F0201", v->loc, NULL, "%s of attribute '%s' is out of "
               "range: must be %s", which, s->name, rng);
    return 0;
}

static int convert(flow_compilation *c, const value *v,
                   const flow_attr_spec *s, const char *what,
                   flow_attr_value *out);

static int convert_list(flow_compilation *c, const value *v,
                        const flow_attr_spec *s, const char *what,
                        flow_attr_value *out)
{
    int is_int = s->type == FLOW_ATTR_INT_LIST;
    int64_t *il = NULL;
    double *rl = NULL;
    int errs = 0;
    if (v->kind != V_LIST)
        return mismatch(c, v, s, what);
    if (v->n < s->min_len || (s->max_len && v->n > s->max_len)) {
        if (s->max_len && s->min_len == s->max_len)
            diag_error(c, "F0203", v->loc, NULL, "attribute '%s' needs "
                       "exactly %zu item%s, got %zu", s->name, s->min_len,
                       s->min_len == 1 ? "" : "s", v->n);
        else if (s->max_len)
            diag_error(c, "F0203", v->loc, NULL, "attribute '%s' needs %zu "
                       "to %zu items, got %zu", s->name, s->min_len,
                       s->max_len, v->n);
        else
            diag_error(c, "F0203", v->loc, NULL, "attribute '%s' needs at "
                       "least %zu item%s, got %zu", s->name, s->min_len,
                       s->min_len == 1 ? "" : "s", v->n);
        return 1;
    }
    if ((c->list_cells += v->n) > FLOW_MAX_CELLS) {
        diag_error(c, "F0400", v->loc, "use fewer layers or shorter lists",
                   "attribute lists hold more than %u items in all",
                   (unsigned)FLOW_MAX_CELLS);
        return 1;
    }
    if (is_int)
        il = arena_array(&c->mem, v->n, sizeof *il);
    else
        rl = arena_array(&c->mem, v->n, sizeof *rl);
    if (!il && !rl)
        return 1;
    for (size_t i = 0; i < v->n && errs < 3; i++) {
        const value *it = v->items[i];
        if (it->kind == V_INT || (!is_int && it->kind == V_REAL)) {
            double x = it->kind == V_INT ? (double)it->i : it->r;
            if (!in_range(c, it, s, x, (long)i))
                errs++;
            else if (is_int)
                il[i] = it->i;
            else
                rl[i] = x;
        } else if (it->kind == V_IDENT) {
            errs += undefined(c, it);
        } else {
            diag_error(c, "F0200", it->loc, NULL, "item %zu of attribute "
                       "'%s' must be %s, got %s", i, s->name,
                       is_int ? "an integer" : "a number",
                       attr_value_desc(c, it));
            errs++;
        }
    }
    out->n = v->n;
    out->ilist = il;
    out->rlist = rl;
    return errs;
}

static int convert_enum(flow_compilation *c, const value *v,
                        const flow_attr_spec *s, const char *what,
                        flow_attr_value *out)
{
    size_t n = 0;
    const char *best;
    char help[FLOW_MAX_IDENT + 32];
    if (v->kind != V_IDENT)
        return mismatch(c, v, s, what);
    for (; s->enum_values && s->enum_values[n]; n++)
        if (!strcmp(s->enum_values[n], v->s)) {
            out->i = (int64_t)n;
            out->s = s->enum_values[n];
            return 0;
        }
    best = diag_suggest(v->s, s->enum_values, n);
    if (best)
        snprintf(help, sizeof help, "did you mean '%s'?", best);
    diag_error(c, "F0204", v->loc, best ? help : NULL, "unknown value '%s' "
               "for attribute '%s'; expected one of: %s", v->s, s->name,
               choices(c, s));
    return 1;
}

static int convert_variant(flow_compilation *c, const value *v,
                           const flow_attr_spec *s, const char *what,
                           flow_attr_value *out)
{
    const flow_variant_alt *alts = s->alternatives;
    const flow_variant_alt *alt = NULL;
    size_t n = 0, k = 0;
    value *const *args = NULL;
    const char *const *names = NULL;
    const flow_loc *nlocs = NULL;
    size_t nargs = 0;
    flow_attr_value *sub = NULL;
    flow_loc *sublocs = NULL;
    char sub_what[FLOW_MAX_IDENT + 64];
    value *one[1];
    const char *one_name[1] = {NULL};

    while (alts && alts[n].name)
        n++;
    if (v->kind == V_LIST) {
        for (k = 0; k < n && !alts[k].bare_list; k++)
            ;
        if (k == n)
            return mismatch(c, v, s, what);
        alt = &alts[k];
        one[0] = (value *)v;
        args = one;
        names = one_name;
        nlocs = &v->loc;
        nargs = 1;
    } else if (v->kind == V_IDENT || v->kind == V_CALL) {
        for (k = 0; k < n && strcmp(alts[k].name, v->s); k++)
            ;
        if (k == n) {
            const char *cands[64];
            const char *best;
            char help[FLOW_MAX_IDENT + 32];
            for (size_t i = 0; i < n && i < 64; i++)
                cands[i] = alts[i].name;
            best = diag_suggest(v->s, cands, n < 64 ? n : 64);
            if (best)
                snprintf(help, sizeof help, "did you mean '%s'?", best);
            diag_error(c, "F0205", v->loc, best ? help : NULL, "unknown "
                       "alternative '%s' for attribute '%s'; expected one "
                       "of: %s", v->s, s->name, choices(c, s));
            return 1;
        }
        alt = &alts[k];
        if (v->kind == V_CALL) {
            args = v->items;
            names = v->names;
            nlocs = v->name_locs;
            nargs = v->n;
        }
    } else {
        return mismatch(c, v, s, what);
    }
    snprintf(sub_what, sizeof sub_what, "'%s' of attribute '%s'", alt->name,
             s->name);
    if (attr_resolve(c, alt->attrs, (value **)args, (const char **)names,
                     nlocs, nargs, v->loc, sub_what, &sub, &sublocs) != 0)
        return 1;
    out->i = (int64_t)k;
    out->s = alt->name;
    out->sub = sub;
    return 0;
}

static int convert(flow_compilation *c, const value *v,
                   const flow_attr_spec *s, const char *what,
                   flow_attr_value *out)
{
    out->type = s->type;
    out->line = v->loc.line;
    out->col = v->loc.col;
    switch (s->type) {
    case FLOW_ATTR_INT:
        if (v->kind != V_INT)
            return mismatch(c, v, s, what);
        if (!in_range(c, v, s, (double)v->i, -1))
            return 1;
        out->i = v->i;
        return 0;
    case FLOW_ATTR_REAL:
        if (v->kind != V_INT && v->kind != V_REAL)
            return mismatch(c, v, s, what);
        out->r = v->kind == V_INT ? (double)v->i : v->r;
        return in_range(c, v, s, out->r, -1) ? 0 : 1;
    case FLOW_ATTR_BOOL:
        if (v->kind != V_IDENT
            || (strcmp(v->s, "true") && strcmp(v->s, "false")))
            return mismatch(c, v, s, what);
        out->i = !strcmp(v->s, "true");
        return 0;
    case FLOW_ATTR_STRING:
        if (v->kind != V_STR)
            return mismatch(c, v, s, what);
        out->s = v->s;
        return 0;
    case FLOW_ATTR_ENUM:
        return convert_enum(c, v, s, what, out);
    case FLOW_ATTR_INT_LIST:
    case FLOW_ATTR_REAL_LIST:
        return convert_list(c, v, s, what, out);
    case FLOW_ATTR_VARIANT:
        return convert_variant(c, v, s, what, out);
    }
    diag_error(c, "F0208", v->loc, NULL, "attribute '%s' of %s has an "
               "unknown type %d in its plugin's table", s->name, what,
               (int)s->type);
    return 1;
}

/* A default written as source text: only literals, lists and calls. */
static value *literal(flow_compilation *c, const expr *e, flow_loc at)
{
    value *v = arena_alloc(&c->mem, sizeof *v);
    size_t i = 0;
    if (!v || !e)
        return NULL;
    v->loc = at;
    switch (e->kind) {
    case E_INT: v->kind = V_INT; v->i = e->i; return v;
    case E_REAL: v->kind = V_REAL; v->r = e->r; return v;
    case E_STR: v->kind = V_STR; v->s = e->s; return v;
    case E_NAME: v->kind = V_IDENT; v->s = e->s; return v;
    case E_NEG:
        if (!(v = literal(c, e->a, at)) || (v->kind != V_INT
                                            && v->kind != V_REAL))
            return NULL;
        v->i = -v->i;
        v->r = -v->r;
        return v;
    case E_LIST:
    case E_CALL:
        v->kind = e->kind == E_LIST ? V_LIST : V_CALL;
        v->s = e->s;
        v->n = e->n;
        v->items = arena_array(&c->mem, e->n, sizeof *v->items);
        v->names = arena_array(&c->mem, e->n, sizeof *v->names);
        v->name_locs = arena_array(&c->mem, e->n, sizeof *v->name_locs);
        if (!v->items || !v->names || !v->name_locs)
            return NULL;
        for (const arg *a = e->args; a; a = a->next, i++) {
            if (!(v->items[i] = literal(c, a->value, at)))
                return NULL;
            v->names[i] = a->name;
            v->name_locs[i] = at;
        }
        return v;
    default:
        return NULL;
    }
}

static int set_default(flow_compilation *c, const flow_attr_spec *s,
                       const char *what, flow_loc owner,
                       flow_attr_value *out)
{
    char err[256];
    expr *e;
    value *v;
    size_t ne = 0;
    out->type = s->type;
    switch (s->type) {
    case FLOW_ATTR_INT:
    case FLOW_ATTR_BOOL:
        out->i = s->def_int;
        return 0;
    case FLOW_ATTR_REAL:
        out->r = s->def_real;
        return 0;
    case FLOW_ATTR_STRING:
        out->s = s->def_str ? s->def_str : "";
        return 0;
    case FLOW_ATTR_ENUM:
        while (s->enum_values && s->enum_values[ne])
            ne++;
        if (s->def_int < 0 || (size_t)s->def_int >= ne) {
            diag_error(c, "F0208", owner, NULL, "plugin bug: default of "
                       "attribute '%s' of %s is enum index %lld of %zu",
                       s->name, what, (long long)s->def_int, ne);
            return 1;
        }
        out->i = s->def_int;
        out->s = s->enum_values[s->def_int];
        return 0;
    case FLOW_ATTR_INT_LIST:
    case FLOW_ATTR_REAL_LIST:
    case FLOW_ATTR_VARIANT:
        break;
    }
    if (!s->def_str) {
        if (s->type != FLOW_ATTR_VARIANT)
            return 0;               /* an empty list */
        diag_error(c, "F0208", owner, NULL, "plugin bug: attribute '%s' of "
                   "%s is optional but has no default", s->name, what);
        return 1;
    }
    e = parse_expr_string(c, s->def_str, err, sizeof err);
    if (!e || !(v = literal(c, e, owner))) {
        diag_error(c, "F0208", owner, NULL, "plugin bug: default \"%s\" of "
                   "attribute '%s' of %s does not parse%s%s", s->def_str,
                   s->name, what, e ? "" : ": ", e ? "" : err);
        return 1;
    }
    if (convert(c, v, s, what, out) != 0)
        return 1;
    out->line = out->col = 0;
    return 0;
}

int attr_resolve(flow_compilation *c, const flow_attr_spec *tab,
                 value **vals, const char **names, const flow_loc *name_locs,
                 size_t n, flow_loc owner_loc, const char *what,
                 flow_attr_value **out, flow_loc **locs)
{
    size_t nt = attr_count(tab), pos = 0;
    const value **given = arena_array(&c->mem, nt, sizeof *given);
    flow_loc *spans = arena_array(&c->mem, nt, sizeof *spans);
    flow_attr_value *res = arena_array(&c->mem, nt, sizeof *res);
    int errs = 0, named = 0;

    *out = NULL;
    *locs = NULL;
    if (!given || !spans || !res)
        return 1;
    for (size_t i = 0; i < n; i++) {
        size_t k;
        if (names[i]) {
            const char *cands[128];
            named = 1;
            for (k = 0; k < nt && strcmp(tab[k].name, names[i]); k++)
                if (k < 128)
                    cands[k] = tab[k].name;
            if (k == nt) {
                const char *best = diag_suggest(names[i], cands,
                                                nt < 128 ? nt : 128);
                char help[600];
                if (best)
                    snprintf(help, sizeof help, "did you mean '%s'?", best);
                else if (nt)
                    snprintf(help, sizeof help, "%s accepts: %s", what,
                             tab[0].name);
                for (size_t j = 1; !best && j < nt && j < 16; j++)
                    snprintf(help + strlen(help), sizeof help - strlen(help),
                             ", %s", tab[j].name);
                diag_error(c, "F0103", name_locs[i], nt || best ? help
                           : NULL, "unknown attribute '%s' for %s%s",
                           names[i], what, nt ? "" : " (it takes none)");
                errs++;
                continue;
            }
        } else {
            if (named) {
                diag_error(c, "F0206", vals[i]->loc, "write name = value",
                           "positional argument after named ones in %s",
                           what);
                errs++;
                continue;
            }
            if ((k = pos++) >= nt) {
                diag_error(c, "F0206", vals[i]->loc, NULL, "too many "
                           "arguments for %s (it takes %zu)", what, nt);
                errs++;
                continue;
            }
        }
        if (given[k]) {
            diag_error(c, "F0104", names[i] ? name_locs[i] : vals[i]->loc,
                       NULL, "attribute '%s' given twice", tab[k].name);
            errs++;
            continue;
        }
        given[k] = vals[i];
        spans[k] = vals[i]->loc;
        if (names[i] && name_locs[i].line == vals[i]->loc.line) {
            spans[k].line = name_locs[i].line;
            spans[k].col = name_locs[i].col;
        }
    }
    for (size_t k = 0; k < nt; k++) {
        if (given[k]) {
            errs += convert(c, given[k], &tab[k], what, &res[k]);
            res[k].given = 1;
        } else if (tab[k].required) {
            char help[300];
            snprintf(help, sizeof help, "add %s = ...%s%s%s", tab[k].name,
                     tab[k].doc ? " (" : "", tab[k].doc ? tab[k].doc : "",
                     tab[k].doc ? ")" : "");
            diag_error(c, "F0202", owner_loc, help, "missing required "
                       "attribute '%s' for %s", tab[k].name, what);
            errs++;
        } else {
            errs += set_default(c, &tab[k], what, owner_loc, &res[k]);
        }
    }
    *out = res;
    *locs = spans;
    return errs;
}
