/* help.h - what flowkit and flowc share to help a user: the known name to
 * suggest for a mistyped one, and a layer type's attribute reference. */
#ifndef FLOW_CLI_HELP_H
#define FLOW_CLI_HELP_H

#include <stdio.h>

#include "flow/flowc.h"

/* The index in cands of the name to suggest for the unknown `name`, or -1.
 * Close means: equal once '_' is read as '-' (--valid_fraction), within
 * the compiler's edit distance of the words after the leading dashes
 * (flow_suggest: --epoch, trian), or, for
 * words of at least 3 letters, one of a candidate's dash-separated end
 * words (--logprob -> --with-logprob).  Names of one letter (-x) get no
 * suggestion. */
long cli_suggest(const char *name, const char *const *cands, size_t n);
/* "; did you mean 'X'?" for cli_suggest's pick, or "" when none; in buf
 * (cap bytes), which is returned. */
const char *cli_did_you_mean(char *buf, size_t cap, const char *name,
                             const char *const *cands, size_t n);
/* The attribute reference of the loaded layer type `type` (summary,
 * plugin, each attribute's type, default, range, alternatives) to f; 0,
 * or -1 when no loaded plugin provides it (nothing printed). */
int cli_layer_reference(const flow_ctx *ctx, const char *type, FILE *f);
/* "; did you mean 'X'?" among the loaded layer types' names, or "". */
const char *cli_layer_did_you_mean(const flow_ctx *ctx, const char *type,
                                   char *buf, size_t cap);

#endif
