" syntax/flow.vim - Vim highlighting of flowkit's .flow model specs: the
" lexical structure of docs/language.md (the scanner is compiler/lexer.l).
"
" Layer and target names are those of the bundled plugins; with a
" `flowkit` on $PATH the types of every plugin it finds (a user's own
" included) are added, unless g:flow_query_plugins is 0.
if exists('b:current_syntax')
  finish
endif
let s:cpo_save = &cpo
set cpo&vim

syn case match

" The reserved words: the keyword table of compiler/lexer.l.
syn keyword flowKeyword input context output exit repeat as import train
syn keyword flowKeyword given in target
syn keyword flowKeyword flow block nextgroup=flowDefName skipwhite skipempty
syn keyword flowKeyword const nextgroup=flowConstName skipwhite skipempty
syn match flowDefName "\h\w*" contained
syn match flowConstName "\h\w*" contained

" Layer and target types of the bundled plugins (tests/editors.sh checks
" them against `flowkit plugins --json`).
" layers:
syn keyword flowLayer actnorm maf iaf batchnorm coupling linear logit ode
syn keyword flowLayer permute residual squeeze conv1x1 dequantize
" targets:
syn keyword flowTarget banana funnel u1 u2 u3 u4 gmm

" Names the compiler knows without a plugin: bases, the element type,
" booleans.
syn keyword flowBase normal diag_normal logistic mixture
syn keyword flowType real
syn keyword flowBoolean true false

" `name = value`: attributes, named arguments and train settings.
syn match flowAttribute "\<\h\w*\ze\s*=[^=]"

" Integers and reals: 8, 1.5, .5, 2., 1e-3, 3.0E+2 ('-' is an operator).
syn match flowNumber "\<\d\+\>"
syn match flowFloat "\<\d\+\.\d*\%([eE][+-]\=\d\+\)\="
syn match flowFloat "\%(\w\)\@<!\.\d\+\%([eE][+-]\=\d\+\)\=\>"
syn match flowFloat "\<\d\+[eE][+-]\=\d\+\>"

" Strings end on their line; escapes \n \t \r \\ \" \xHH (not \x00).
syn region flowString start=+"+ skip=+\\\\\|\\"+ end=+"+ end=+$+ oneline
      \ contains=flowEscape,flowEscapeError
syn match flowEscapeError "\\." contained
syn match flowEscape "\\[ntr\\"]" contained
syn match flowEscape "\\x\%(00\)\@![0-9A-Fa-f]\{2}" contained

syn match flowOperator "->\|[~=+*/%-]"

" Comments: # and // to the end of the line, /* */ not nested.
syn keyword flowTodo TODO FIXME XXX NOTE contained
syn match flowComment "#.*$" contains=flowTodo,@Spell
syn match flowComment "//.*$" contains=flowTodo,@Spell
syn region flowComment start="/\*" end="\*/" contains=flowTodo,@Spell

" Every plugin a `flowkit` on $PATH finds, once per Vim session.
if get(g:, 'flow_query_plugins', 1) && executable('flowkit')
      \ && exists('*json_decode')
  if !exists('g:flow_plugin_types')
    let g:flow_plugin_types = {'layers': [], 'targets': []}
    silent let s:out = system('flowkit plugins --json')
    if !v:shell_error
      try
        for s:p in get(json_decode(s:out), 'plugins', [])
          for s:l in get(s:p, 'layers', [])
            call add(g:flow_plugin_types.layers, s:l.name)
          endfor
          for s:l in get(s:p, 'targets', [])
            call add(g:flow_plugin_types.targets, s:l.name)
          endfor
        endfor
      catch
      endtry
    endif
  endif
  for s:n in g:flow_plugin_types.layers
    if s:n =~# '^\h\w*$'
      exe 'syn keyword flowLayer' s:n
    endif
  endfor
  for s:n in g:flow_plugin_types.targets
    if s:n =~# '^\h\w*$'
      exe 'syn keyword flowTarget' s:n
    endif
  endfor
endif

syn sync minlines=50

hi def link flowKeyword Keyword
hi def link flowDefName Function
hi def link flowConstName Constant
hi def link flowLayer Function
hi def link flowTarget Function
hi def link flowBase Type
hi def link flowType Type
hi def link flowBoolean Boolean
hi def link flowAttribute Identifier
hi def link flowNumber Number
hi def link flowFloat Float
hi def link flowString String
hi def link flowEscape SpecialChar
hi def link flowEscapeError Error
hi def link flowOperator Operator
hi def link flowComment Comment
hi def link flowTodo Todo

let b:current_syntax = 'flow'
let &cpo = s:cpo_save
unlet s:cpo_save
