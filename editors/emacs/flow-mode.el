;;; flow-mode.el --- major mode for flowkit's .flow model specs  -*- lexical-binding: t -*-
;; Highlighting and indentation of the language of docs/language.md (the
;; scanner is compiler/lexer.l); `auto-mode-alist' maps *.flow to it.

;;; Commentary:

;; Put this file on `load-path' and (require 'flow-mode).  Layer and
;; target names are those of the bundled plugins; with a `flowkit' on
;; `exec-path' the types of every plugin it finds (a user's own included)
;; are added, unless `flow-query-plugins' is nil.

;;; Code:

(require 'json)

(defgroup flow nil
  "Editing flowkit's .flow model specs."
  :group 'languages
  :prefix "flow-")

(defcustom flow-indent-offset 4
  "Indentation of each level of braces in a .flow spec."
  :type 'integer
  :safe #'integerp)

(defcustom flow-query-plugins t
  "Non-nil: ask `flowkit plugins --json' for the layer and target types."
  :type 'boolean)

;; The reserved words: the keyword table of compiler/lexer.l.
(defconst flow-keywords
  '("flow" "input" "context" "output" "exit" "repeat" "as" "block" "const"
    "import" "train" "given" "in" "target"))

;; Layer and target types of the bundled plugins (tests/editors.sh checks
;; them against `flowkit plugins --json').
(defconst flow-layers
  '("actnorm" "maf" "iaf" "batchnorm" "coupling" "linear" "logit" "ode"
    "permute" "residual" "squeeze" "conv1x1" "dequantize"))
(defconst flow-targets
  '("banana" "funnel" "u1" "u2" "u3" "u4" "gmm"))

;; Names the compiler knows without a plugin.
(defconst flow-bases '("normal" "diag_normal" "logistic" "mixture"))

(defvar flow--plugin-types nil
  "Cons of the layer and target names `flowkit plugins' reported.")

(defun flow--plugin-types ()
  "The (LAYERS . TARGETS) of every plugin `flowkit' finds, asked once."
  (or flow--plugin-types
      (setq flow--plugin-types
            (or (and flow-query-plugins (executable-find "flowkit")
                     (ignore-errors
                       (with-temp-buffer
                         (when (eq 0 (call-process "flowkit" nil
                                                   (list t nil) nil
                                                   "plugins" "--json"))
                           (goto-char (point-min))
                           (let* ((json-object-type 'alist)
                                  (json-array-type 'list)
                                  (plugins (alist-get 'plugins (json-read)))
                                  layers targets)
                             (dolist (p plugins)
                               (dolist (l (alist-get 'layers p))
                                 (push (alist-get 'name l) layers))
                               (dolist (l (alist-get 'targets p))
                                 (push (alist-get 'name l) targets)))
                             (cons layers targets))))))
                (cons nil nil)))))

(defun flow--font-lock-keywords ()
  "The font-lock rules, with the names of the plugins found."
  (let* ((found (flow--plugin-types))
         (layers (delete-dups (append flow-layers (car found))))
         (targets (delete-dups (append flow-targets (cdr found)))))
    `((,(regexp-opt flow-keywords 'symbols) . font-lock-keyword-face)
      ("\\_<\\(flow\\|block\\)\\_>[ \t\n]+\\([A-Za-z_][A-Za-z0-9_]*\\)"
       2 font-lock-function-name-face)
      ("\\_<const\\_>[ \t\n]+\\([A-Za-z_][A-Za-z0-9_]*\\)"
       1 font-lock-constant-face)
      (,(regexp-opt layers 'symbols) . font-lock-builtin-face)
      (,(regexp-opt targets 'symbols) . font-lock-builtin-face)
      (,(regexp-opt flow-bases 'symbols) . font-lock-type-face)
      ("\\_<real\\_>" . font-lock-type-face)
      ("\\_<\\(true\\|false\\)\\_>" . font-lock-constant-face)
      ;; `name = value': attributes, named arguments, train settings
      ("\\_<\\([A-Za-z_][A-Za-z0-9_]*\\)[ \t]*=" 1 font-lock-variable-name-face)
      ;; reals (1.5 .5 2. 1e-3 3.0E+2), then integers
      (,(concat "\\(?:\\_<[0-9]+\\.[0-9]*\\|\\.[0-9]+\\|\\_<[0-9]+"
                "\\(?:[eE][-+]?[0-9]+\\)\\)\\(?:[eE][-+]?[0-9]+\\)?")
       . font-lock-constant-face)
      ("\\_<[0-9]+\\_>" . font-lock-constant-face)
      ;; escapes inside strings: \n \t \r \\ \" \xHH
      ("\\\\\\(?:[ntr\\\"]\\|x[0-9A-Fa-f][0-9A-Fa-f]\\)"
       0 (when (nth 3 (save-excursion (syntax-ppss (match-beginning 0))))
           'flow-escape-face)
       prepend))))

(defface flow-escape-face
  '((t :inherit font-lock-regexp-grouping-backslash))
  "Face of the escape sequences in strings.")

(defvar flow-mode-syntax-table
  (let ((st (make-syntax-table)))
    ;; # and // to the end of the line (style b), /* */ (style a)
    (modify-syntax-entry ?# "< b" st)
    (modify-syntax-entry ?/ ". 124b" st)
    (modify-syntax-entry ?* ". 23" st)
    (modify-syntax-entry ?\n "> b" st)
    (modify-syntax-entry ?\r "> b" st)
    (modify-syntax-entry ?\" "\"" st)
    (modify-syntax-entry ?\\ "\\" st)
    (modify-syntax-entry ?_ "_" st)
    (dolist (c '(?+ ?- ?% ?= ?~ ?: ?\; ?,))
      (modify-syntax-entry c "." st))
    st)
  "Syntax table of `flow-mode'.")

(defun flow-indent-line ()
  "Indent the current line by its depth in brackets.
A line inside ( or [ with text after the opener lines up with that
text, as the specs under specs/ are written."
  (interactive)
  (let* ((ppss (save-excursion (syntax-ppss (line-beginning-position))))
         (open (nth 1 ppss))
         (offset (- (current-column) (current-indentation)))
         col)
    (unless (nth 4 ppss)               ; inside a /* */ comment: keep it
      (setq col
            (if (not open)
                0
              (save-excursion
                (back-to-indentation)
                (let ((closes (looking-at "[]})]")))
                  (goto-char open)
                  (cond
                   (closes (current-indentation))
                   ((and (memq (char-after open) '(?\( ?\[))
                         (progn (forward-char 1)
                                (skip-chars-forward " \t")
                                (not (looking-at "$\\|#\\|//\\|/\\*"))))
                    (current-column))
                   (t (+ (current-indentation) flow-indent-offset)))))))
      (indent-line-to col)
      (when (> offset 0)
        (move-to-column (+ col offset))))))

;;;###autoload
(define-derived-mode flow-mode prog-mode "Flow"
  "Major mode for flowkit's .flow model specs (docs/language.md)."
  :syntax-table flow-mode-syntax-table
  (setq-local comment-start "# ")
  (setq-local comment-end "")
  (setq-local comment-start-skip "\\(?:#+\\|//+\\|/\\*+\\)[ \t]*")
  (setq-local indent-line-function #'flow-indent-line)
  (setq-local indent-tabs-mode nil)
  ;; a closing bracket typed at the start of a line moves to its opener's
  (setq-local electric-indent-chars
              (append "})]" electric-indent-chars))
  (setq-local font-lock-defaults (list (flow--font-lock-keywords))))

;;;###autoload
(add-to-list 'auto-mode-alist '("\\.flow\\'" . flow-mode))

(provide 'flow-mode)
;;; flow-mode.el ends here
