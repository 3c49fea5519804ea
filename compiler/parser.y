/* parser.y - the pure Bison grammar of the .flow language: builds the AST
 * in the compilation's arena and recovers at ';' and '}' to keep going. */
%code requires {
#include "compiler.h"
typedef struct parse_ctx {
    flow_compilation *c;
    lex_state *ls;
    void *scanner;
    stmt *items;                  /* START_FILE result                    */
    expr *expr;                   /* START_EXPR result                    */
    int deep_reported;
    int long_reported;
} parse_ctx;
}

%code provides {
/* the scanner's bison-bridge names */
#define YYSTYPE FLOWYYSTYPE
#define YYLTYPE FLOWYYLTYPE
int flowyylex(FLOWYYSTYPE *lval, flow_loc *lloc, void *scanner);
}

%code {
#include <string.h>

/* Bounded parser stack: deeper input is an error, not an allocation. */
#define YYMAXDEPTH 2000
#define YYINITDEPTH 200

/* A span from the first to the last symbol of a rule; an empty rule sits
 * at the end of the previous symbol. */
#define YYLLOC_DEFAULT(Cur, Rhs, N)                                       \
    do {                                                                  \
        if (N) {                                                          \
            (Cur).file = YYRHSLOC(Rhs, 1).file;                           \
            (Cur).line = YYRHSLOC(Rhs, 1).line;                           \
            (Cur).col = YYRHSLOC(Rhs, 1).col;                             \
            (Cur).end_line = YYRHSLOC(Rhs, N).end_line;                   \
            (Cur).end_col = YYRHSLOC(Rhs, N).end_col;                     \
        } else {                                                          \
            (Cur).file = YYRHSLOC(Rhs, 0).file;                           \
            (Cur).line = (Cur).end_line = YYRHSLOC(Rhs, 0).end_line;      \
            (Cur).col = (Cur).end_col = YYRHSLOC(Rhs, 0).end_col;         \
        }                                                                 \
    } while (0)

#define NEW(T) ((T *)arena_alloc(&p->c->mem, sizeof(T)))

static void flowyyerror(flow_loc *loc, void *scanner, parse_ctx *p,
                        const char *msg);
static expr *mk_expr(parse_ctx *p, expr_kind k, flow_loc loc);
static expr *mk_bin(parse_ctx *p, int op, expr *a, expr *b, flow_loc loc);
static stmt *mk_stmt(parse_ctx *p, stmt_kind k, flow_loc loc);
static expr *mk_shape(parse_ctx *p, const arg_list *dims, flow_loc open,
                      flow_loc close);
static arg *mk_arg(parse_ctx *p, const char *name, flow_loc name_loc,
                   expr *val, flow_loc loc);
static void args_add(arg_list *l, arg *a);
static void stmts_add(stmt_list *l, stmt *s);
}

%define api.pure full
%define api.prefix {flowyy}
%define api.location.type {flow_loc}
%define parse.error custom
%define parse.lac full
%locations
%expect 0
%lex-param {void *scanner}
%parse-param {void *scanner} {parse_ctx *p}

%union {
    int64_t i;
    double r;
    char *str;
    expr *e;
    arg *a;
    arg_list al;
    stmt *s;
    stmt_list sl;
    base_ref base;
}

/* Every semantic value lives in the compilation's arena, which is freed
 * as a whole, so values discarded during error recovery need no
 * %destructor of their own. */

%token <i> INT "integer"
%token <r> REAL "real number"
%token <str> STRING "string"
%token <str> IDENT "identifier"
%token FLOW "'flow'" INPUT "'input'" CONTEXT "'context'" OUTPUT "'output'"
%token EXIT "'exit'" REPEAT "'repeat'" AS "'as'" BLOCK "'block'"
%token CONST "'const'" IMPORT "'import'" TRAIN "'train'" GIVEN "'given'"
%token IN "'in'" ARROW "'->'" TARGET "'target'"
%token START_FILE START_EXPR

%left '+' '-'
%left '*' '/' '%'
%precedence NEG

%type <e> expr
%type <a> arg
%type <al> args args_opt list list_opt params params_opt
%type <s> item stmt const_stmt body kv
%type <sl> items stmts kvs
%type <str> as_opt
%type <base> base given_opt

%%

top : START_FILE items          { p->items = $2.head; }
    | START_EXPR expr           { p->expr = $2; }
    ;

/* items ::= { item } */
items : %empty                  { $$.head = $$.tail = NULL; }
      | items item              { $$ = $1; stmts_add(&$$, $2); }
      ;

/* item ::= 'import' STRING ';' | const | 'block' NAME '(' [params] ')' body
 *        | 'flow' NAME body */
item : IMPORT STRING ';'        {
           $$ = mk_stmt(p, S_IMPORT, @1);
           if ($$) { $$->name = $2; $$->name_loc = @2; }
       }
     | const_stmt               { $$ = $1; }
     | BLOCK IDENT '(' params_opt ')' body {
           $$ = mk_stmt(p, S_BLOCK, @1);
           if ($$) {
               $$->name = $2; $$->name_loc = @2;
               $$->args = $4.head; $$->n = $4.n; $$->body = $6;
           }
       }
     | FLOW IDENT body          {
           $$ = mk_stmt(p, S_FLOW, @1);
           if ($$) { $$->name = $2; $$->name_loc = @2; $$->body = $3; }
       }
     | error ';'                { $$ = NULL; yyerrok; }
     | error '}'                { $$ = NULL; yyerrok; }
     ;

/* body ::= '{' { stmt } '}' ; the statement list hangs off a dummy head
 * that records the closing brace. */
body : '{' stmts '}'            {
           $$ = mk_stmt(p, S_KV, @1);
           if ($$) { $$->body = $2.head; $$->close_loc = @3; }
       }
     | '{' stmts error '}'      {
           $$ = mk_stmt(p, S_KV, @1);
           if ($$) { $$->body = $2.head; $$->close_loc = @4; }
           yyerrok;
       }
     ;

stmts : %empty                  { $$.head = $$.tail = NULL; }
      | stmts stmt              { $$ = $1; stmts_add(&$$, $2); }
      ;

/* stmt ::= NAME ['(' [args] ')'] ['given' NAME] ';'
 *        | 'repeat' expr ['as' NAME] body | const
 *        | 'exit' expr '->' NAME '~' base ';'
 *        | 'input' NAME ':' NAME '[' expr {',' expr} ']'
 *          ['in' '[' expr ',' expr ']'] ';'
 *        | 'context' NAME ':' NAME '[' expr ']' ';'
 *        | 'output' NAME '~' base ';' | 'train' '{' { NAME '=' expr ';' } '}'
 *        | 'target' NAME ['(' [args] ')'] ';' */
stmt : IDENT '(' args_opt ')' given_opt ';' {
           $$ = mk_stmt(p, S_LAYER, @1);
           if ($$) {
               $$->name = $1; $$->name_loc = @1; $$->has_parens = 1;
               $$->args = $3.head; $$->n = $3.n;
               $$->given = $5.given; $$->given_loc = $5.given_loc;
               $$->loc.end_line = @4.end_line; $$->loc.end_col = @4.end_col;
           }
       }
     | IDENT given_opt ';'      {
           $$ = mk_stmt(p, S_LAYER, @1);
           if ($$) {
               $$->name = $1; $$->name_loc = @1;
               $$->given = $2.given; $$->given_loc = $2.given_loc;
           }
       }
     | REPEAT expr as_opt body  {
           $$ = mk_stmt(p, S_REPEAT, @1);
           if ($$) {
               $$->e = $2; $$->name = $3; $$->name_loc = @3; $$->body = $4;
           }
       }
     | const_stmt               { $$ = $1; }
     | EXIT expr ARROW IDENT '~' base ';' {
           $$ = mk_stmt(p, S_EXIT, @1);
           if ($$) {
               $$->e = $2; $$->name = $4; $$->name_loc = @4; $$->base = $6;
               $$->loc.end_line = @6.end_line; $$->loc.end_col = @6.end_col;
           }
       }
     | INPUT IDENT ':' IDENT '[' list ']' ';' {
           $$ = mk_stmt(p, S_INPUT, @1);
           if ($$) {
               $$->name = $2; $$->name_loc = @2; $$->type_name = $4;
               $$->type_loc = @4; $$->e = mk_shape(p, &$6, @5, @7);
           }
       }
     | INPUT IDENT ':' IDENT '[' list ']' IN '[' expr ',' expr ']' ';' {
           $$ = mk_stmt(p, S_INPUT, @1);
           if ($$) {
               $$->name = $2; $$->name_loc = @2; $$->type_name = $4;
               $$->type_loc = @4; $$->e = mk_shape(p, &$6, @5, @7);
               $$->lo = $10; $$->hi = $12;
           }
       }
     | CONTEXT IDENT ':' IDENT '[' expr ']' ';' {
           $$ = mk_stmt(p, S_CONTEXT, @1);
           if ($$) {
               $$->name = $2; $$->name_loc = @2; $$->type_name = $4;
               $$->type_loc = @4; $$->e = $6;
           }
       }
     | OUTPUT IDENT '~' base ';' {
           $$ = mk_stmt(p, S_OUTPUT, @1);
           if ($$) { $$->name = $2; $$->name_loc = @2; $$->base = $4; }
       }
     | TARGET IDENT '(' args_opt ')' ';' {
           $$ = mk_stmt(p, S_TARGET, @1);
           if ($$) {
               $$->name = $2; $$->name_loc = @2; $$->has_parens = 1;
               $$->args = $4.head; $$->n = $4.n;
               $$->loc.end_line = @5.end_line; $$->loc.end_col = @5.end_col;
           }
       }
     | TARGET IDENT ';'         {
           $$ = mk_stmt(p, S_TARGET, @1);
           if ($$) {
               $$->name = $2; $$->name_loc = @2;
               $$->loc.end_line = @2.end_line; $$->loc.end_col = @2.end_col;
           }
       }
     | TRAIN '{' kvs '}'        {
           $$ = mk_stmt(p, S_TRAIN, @1);
           if ($$) { $$->body = $3.head; $$->close_loc = @4; }
       }
     | error ';'                { $$ = NULL; yyerrok; }
     ;

const_stmt : CONST IDENT '=' expr ';' {
           $$ = mk_stmt(p, S_CONST, @1);
           if ($$) { $$->name = $2; $$->name_loc = @2; $$->e = $4; }
       }
     ;

as_opt : %empty                 { $$ = NULL; }
       | AS IDENT               { $$ = $2; @$ = @2; }
       ;

/* base ::= NAME ['(' [args] ')'] ['given' NAME] */
base : IDENT given_opt          {
           $$ = $2; $$.name = $1; $$.loc = @1;
       }
     | IDENT '(' args_opt ')' given_opt {
           $$ = $5; $$.name = $1; $$.loc = @1;
           $$.loc.end_line = @4.end_line; $$.loc.end_col = @4.end_col;
           $$.args = $3.head; $$.n = $3.n;
       }
     ;

given_opt : %empty              { memset(&$$, 0, sizeof $$); }
          | GIVEN IDENT         {
                memset(&$$, 0, sizeof $$);
                $$.given = $2; $$.given_loc = @2;
            }
          ;

kvs : %empty                    { $$.head = $$.tail = NULL; }
    | kvs kv                    { $$ = $1; stmts_add(&$$, $2); }
    ;

kv : IDENT '=' expr ';'         {
         $$ = mk_stmt(p, S_KV, @1);
         if ($$) { $$->name = $1; $$->name_loc = @1; $$->e = $3; }
     }
   | error ';'                  { $$ = NULL; yyerrok; }
   ;

params_opt : %empty             { $$.head = $$.tail = NULL; $$.n = 0; }
           | params             { $$ = $1; }
           ;

params : IDENT                  {
             $$.head = $$.tail = NULL; $$.n = 0;
             args_add(&$$, mk_arg(p, $1, @1, NULL, @1));
         }
       | params ',' IDENT       {
             $$ = $1;
             args_add(&$$, mk_arg(p, $3, @3, NULL, @3));
         }
       ;

args_opt : %empty               { $$.head = $$.tail = NULL; $$.n = 0; }
         | args                 { $$ = $1; }
         ;

args : arg                      {
           $$.head = $$.tail = NULL; $$.n = 0;
           args_add(&$$, $1);
       }
     | args ',' arg             {
           $$ = $1;
           if ($$.n < FLOW_MAX_LIST)
               args_add(&$$, $3);
           else if (!p->long_reported++)
               diag_error(p->c, "F0400", @3, NULL, "more than %d "
                          "arguments", FLOW_MAX_LIST);
       }
     ;

/* arg ::= expr | NAME '=' expr */
arg : expr                      { $$ = mk_arg(p, NULL, @1, $1, @1); }
    | IDENT '=' expr            { $$ = mk_arg(p, $1, @1, $3, @$); }
    ;

list_opt : %empty               { $$.head = $$.tail = NULL; $$.n = 0; }
         | list                 { $$ = $1; }
         | list ','             { $$ = $1; }
         ;

list : expr                     {
           $$.head = $$.tail = NULL; $$.n = 0;
           args_add(&$$, mk_arg(p, NULL, @1, $1, @1));
       }
     | list ',' expr            {
           $$ = $1;
           if ($$.n < FLOW_MAX_LIST)
               args_add(&$$, mk_arg(p, NULL, @3, $3, @3));
           else if (!p->long_reported++)
               diag_error(p->c, "F0400", @3, NULL, "list longer than %d "
                          "items", FLOW_MAX_LIST);
       }
     ;

/* expr ::= INT | REAL | STRING | NAME | NAME '(' [args] ')' | '[' [list] ']'
 *        | '(' expr ')' | expr op expr | '-' expr */
expr : INT                      {
           $$ = mk_expr(p, E_INT, @1);
           if ($$) $$->i = $1;
       }
     | REAL                     {
           $$ = mk_expr(p, E_REAL, @1);
           if ($$) $$->r = $1;
       }
     | STRING                   {
           $$ = mk_expr(p, E_STR, @1);
           if ($$) $$->s = $1;
       }
     | IDENT                    {
           $$ = mk_expr(p, E_NAME, @1);
           if ($$) $$->s = $1;
       }
     | IDENT '(' args_opt ')'   {
           $$ = mk_expr(p, E_CALL, @$);
           if ($$) { $$->s = $1; $$->args = $3.head; $$->n = $3.n; }
       }
     | '[' list_opt ']'         {
           $$ = mk_expr(p, E_LIST, @$);
           if ($$) { $$->args = $2.head; $$->n = $2.n; }
       }
     | '(' expr ')'             { $$ = $2; }
     | expr '+' expr            { $$ = mk_bin(p, '+', $1, $3, @$); }
     | expr '-' expr            { $$ = mk_bin(p, '-', $1, $3, @$); }
     | expr '*' expr            { $$ = mk_bin(p, '*', $1, $3, @$); }
     | expr '/' expr            { $$ = mk_bin(p, '/', $1, $3, @$); }
     | expr '%' expr            { $$ = mk_bin(p, '%', $1, $3, @$); }
     | '-' expr %prec NEG       { $$ = mk_bin(p, 'n', $2, NULL, @$); }
     ;

%%

static void flowyyerror(flow_loc *loc, void *scanner, parse_ctx *p,
                        const char *msg)
{
    (void)scanner;
    /* Only Bison's own failures come here ("memory exhausted" when the
     * bounded stack is full); syntax errors go through the custom
     * reporter below. */
    diag_error(p->c, "F0400", *loc, "split the spec into blocks",
               "input nested too deeply (%s)", msg);
    p->ls->stop = 1;
}

/* Syntax errors: "unexpected X, expecting Y or Z" at the token, or, at the
 * end of the file with brackets open, "'}' expected (to close 'flow' at
 * line 3)" like Lua's check_match. */
static int semicolon_expected(const yysymbol_kind_t *exp, int n)
{
    for (int i = 0; i < n && n <= 4; i++)
        if (!strcmp(yysymbol_name(exp[i]), "';'"))
            return 1;
    return 0;
}

static int yyreport_syntax_error(const yypcontext_t *ctx, void *scanner,
                                 parse_ctx *p)
{
    yysymbol_kind_t la = yypcontext_token(ctx);
    yysymbol_kind_t all[YYNTOKENS], exp[YYNTOKENS];
    int n_all = yypcontext_expected_tokens(ctx, all, YYNTOKENS);
    int n = 0, ops = 0, want_value = 0, top = 0;
    flow_loc loc = *yypcontext_location(ctx);
    lex_state *ls = p->ls;
    char msg[256];
    size_t used;

    (void)scanner;

    if (ls->stop)
        return 0;
    if ((la == YYSYMBOL_YYEOF || la == YYSYMBOL_FLOW || la == YYSYMBOL_BLOCK
         || la == YYSYMBOL_IMPORT) && ls->depth > 0 && ls->inner_kw) {
        /* a '}' closed a repeat or block that held a flow-level
         * statement, and so its parent was left open (to the end of the
         * file, or to the next top-level item): the body is the one that
         * lacks its '}' (before that statement) */
        char help[160];
        snprintf(help, sizeof help, "'%s' cannot be inside a %s: close the "
                 "%s before it (the '{' at line %d)", ls->inner_kw,
                 ls->inner_in, ls->inner_in, ls->inner_in_line);
        diag_error(p->c, "F0002", ls->inner_loc, help,
                   "'}' expected (to close '%s' at line %d) before '%s'",
                   ls->inner_in, ls->inner_in_line, ls->inner_kw);
        ls->depth = 0;
        ls->stop = 1;       /* what follows would only repeat it */
        return 0;
    }
    if ((la == YYSYMBOL_FLOW || la == YYSYMBOL_BLOCK
         || la == YYSYMBOL_IMPORT) && ls->depth > 0
        && ls->open[ls->depth - 1].ch == '{') {
        /* a top-level item inside a body: that body is unclosed */
        const char *what = ls->open[ls->depth - 1].kw;
        int line = ls->open[ls->depth - 1].line;
        char help[96];
        snprintf(help, sizeof help, "the '{' at line %d is never closed",
                 line);
        diag_error(p->c, "F0002", loc, help,
                   "'}' expected (to close '%s' at line %d) before %s",
                   what ? what : "{", line, yysymbol_name(la));
        ls->depth = 0;
        ls->stop = 1;
        return 0;
    }
    if (la == YYSYMBOL_YYEOF && ls->depth > 0) {
        const char *what = ls->open[ls->depth - 1].kw;
        char ch = ls->open[ls->depth - 1].ch;
        char closer = ch == '(' ? ')' : ch == '[' ? ']' : '}';
        int line = ls->open[ls->depth - 1].line;
        char help[96];
        snprintf(help, sizeof help, "the '%c' at line %d is never closed",
                 ch, line);
        if (what)
            diag_error(p->c, "F0002", loc, help,
                       "'%c' expected (to close '%s' at line %d)", closer,
                       what, line);
        else
            diag_error(p->c, "F0002", loc, help,
                       "'%c' expected (to close '%c' at line %d)", closer,
                       ch, line);
        ls->depth = 0;
        return 0;
    }
    /* Group what could come next: the start of a value, an operator
     * (continuing an expression), or a few named tokens. */
    for (int i = 0; i < n_all; i++)
        if (all[i] == YYSYMBOL_INT)
            want_value = 1;     /* then '-' is unary, not an operator */
    for (int i = 0; i < n_all; i++) {
        const char *name = yysymbol_name(all[i]);
        if (!want_value && strlen(name) == 3 && name[0] == '\''
            && strchr("+-*/%", name[1]))
            ops = 1;
        if (all[i] != YYSYMBOL_INT && all[i] != YYSYMBOL_REAL
            && all[i] != YYSYMBOL_STRING
            && !(strlen(name) == 3 && name[0] == '\''
                 && strchr("+-*/%([", name[1])))
            exp[n++] = all[i];
    }
    if (want_value) {
        /* IDENT and the brackets are part of "a value" */
        int k = 0;
        for (int i = 0; i < n; i++)
            if (exp[i] != YYSYMBOL_IDENT)
                exp[k++] = exp[i];
        n = k;
    }
    used = (size_t)snprintf(msg, sizeof msg, "syntax error, unexpected %s",
                            yysymbol_name(la));
    if (n + want_value + ops > 0 && n <= 4) {
        int parts = n + want_value + ops, k = 0;
        const char *sep;
        for (int i = 0; i < parts && used < sizeof msg; i++, k++) {
            const char *what = i < n ? yysymbol_name(exp[i])
                             : i == n && want_value ? "a value" : "an operator";
            sep = k == 0 ? ", expecting " : k == parts - 1 ? " or " : ", ";
            used += (size_t)snprintf(msg + used, sizeof msg - used, "%s%s",
                                     sep, what);
        }
    }
    for (int i = 0; i < n_all; i++)
        if (all[i] == YYSYMBOL_FLOW)
            top = 1;
    diag_error(p->c, "F0001", loc, top ? "the top level holds import, const, "
               "block and flow" : semicolon_expected(exp, n)
               ? "statements end with ';'" : NULL, "%s", msg);
    if (diag_stopped(p->c))
        ls->stop = 1;
    return 0;
}

static expr *mk_expr(parse_ctx *p, expr_kind k, flow_loc loc)
{
    expr *e = NEW(expr);
    if (e) {
        e->kind = k;
        e->loc = loc;
        e->depth = 1;
    }
    return e;
}

/* The dimensions of `real[...]`: the one expression of `real[D]`, or a
 * list spanning the brackets for `real[C, H, W]` (sema checks the rank). */
static expr *mk_shape(parse_ctx *p, const arg_list *dims, flow_loc open,
                      flow_loc close)
{
    expr *e;
    if (dims->n == 1)
        return dims->head->value;
    open.end_line = close.end_line;
    open.end_col = close.end_col;
    if ((e = mk_expr(p, E_LIST, open))) {
        e->args = dims->head;
        e->n = dims->n;
    }
    return e;
}

/* Binary or unary ('n') node; trees deeper than a bound are refused so
 * that evaluation's recursion stays shallow. */
static expr *mk_bin(parse_ctx *p, int op, expr *a, expr *b, flow_loc loc)
{
    int depth = 1 + (a ? a->depth : 0);
    expr *e;
    if (b && b->depth + 1 > depth)
        depth = b->depth + 1;
    if (depth > 4 * FLOW_MAX_NESTING) {
        if (!p->deep_reported)
            diag_error(p->c, "F0400", loc, "use a const for a partial result",
                       "expression nested deeper than %d levels",
                       4 * FLOW_MAX_NESTING);
        p->deep_reported = 1;
        return a;
    }
    e = mk_expr(p, op == 'n' ? E_NEG : E_BIN, loc);
    if (e) {
        e->op = op;
        e->a = a;
        e->b = b;
        e->depth = depth;
    }
    return e;
}

static stmt *mk_stmt(parse_ctx *p, stmt_kind k, flow_loc loc)
{
    stmt *s = NEW(stmt);
    if (s) {
        s->kind = k;
        s->loc = loc;
    }
    return s;
}

static arg *mk_arg(parse_ctx *p, const char *name, flow_loc name_loc,
                   expr *val, flow_loc loc)
{
    arg *a = NEW(arg);
    if (a) {
        a->name = name;
        a->name_loc = name_loc;
        a->value = val;
        a->loc = loc;
    }
    return a;
}

static void args_add(arg_list *l, arg *a)
{
    if (!a)
        return;
    if (l->tail)
        l->tail->next = a;
    else
        l->head = a;
    l->tail = a;
    l->n++;
}

static void stmts_add(stmt_list *l, stmt *s)
{
    if (!s)
        return;
    if (l->tail)
        l->tail->next = s;
    else
        l->head = s;
    l->tail = s;
}
