" ftdetect/flow.vim - Vim file type detection for flowkit's .flow model
" specs (docs/language.md); the highlighting is in syntax/flow.vim.
autocmd BufNewFile,BufRead *.flow setfiletype flow
