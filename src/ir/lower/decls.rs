//! Declarations: data sets, models and rewards, and the `data.member` references stages make
//! to them.

use super::Cx;
use super::calls::{as_call, split_args};
use super::errors::*;
use super::exprs::const_eval;
use crate::diag::{Diagnostic, did_you_mean};
use crate::ir::builtins::{self, MemberKind};
use crate::ir::graph::*;
use crate::syntax::ast::*;

impl Cx {
    pub(super) fn lower_decl(&mut self, d: &Decl) {
        if self.declared.get(&d.name.name).map(|(_, s)| *s) != Some(d.name.span) {
            return; // a duplicate, already reported
        }
        match d.kind {
            DeclKind::Data => self.lower_data(d),
            DeclKind::Model => self.lower_model(d),
            DeclKind::Reward => self.lower_reward(d),
        }
    }

    pub(super) fn lower_data(&mut self, d: &Decl) {
        let help = "declare data as `data NAME = builtin(\"arith\")`, `builtin(\"reviews\")` or `file(\"train.parquet\", prompt = \"question\")` (also `.jsonl`, `.json`)";
        let Some((callee, args)) = as_call(&d.value) else {
            return self.diags.push(invalid_decl(&d.value, "a data set", help));
        };
        // `file(...)` reads JSON lines, a JSON array or Parquet by extension; `jsonl(...)` is the
        // same constructor under its first name.
        if callee == "jsonl" || callee == "file" {
            let (positional, mut params) = split_args(args, &mut self.diags);
            if let Some(p) = positional.first() {
                params.insert(
                    0,
                    (Ident { name: "path".into(), span: p.span }, const_eval(p), p.span),
                );
            }
            if let Some(extra) = positional.get(1) {
                self.diags.push(too_many(extra.span, callee, 1));
            }
            let spec = &builtins::JSONL;
            self.prog.data.push(DataDecl { name: d.name.clone(), spec, params, span: d.span });
            return;
        }
        if callee != "builtin" {
            return self.diags.push(invalid_decl(&d.value, "a data set", help));
        }
        let (positional, params) = split_args(args, &mut self.diags);
        let Some(Expr { kind: ExprKind::Str(set), span }) = positional.first() else {
            return self.diags.push(invalid_decl(&d.value, "a data set", help));
        };
        let Some(spec) = builtins::data_set(set) else {
            let names = builtins::DATA_SETS.iter().map(|d| d.name);
            let mut diag = Diagnostic::error("unknown-name", format!("unknown data set `{set}`"))
                .primary(*span, "not a built-in data set");
            diag = match did_you_mean(set, names) {
                Some(s) => diag.help(format!("did you mean `{s}`?")),
                None => diag.help("the built-in data sets are `arith` and `reviews`"),
            };
            return self.diags.push(diag);
        };
        self.prog.data.push(DataDecl { name: d.name.clone(), spec, params, span: d.span });
    }

    pub(super) fn lower_model(&mut self, d: &Decl) {
        let help = "declare a model as `builtin(\"tiny\", warm_start = DATA.texts)`, `pretrained(\"path/to/hf-model\")`, `copy(MODEL)`, `reward_model(\"tiny\")`, `yes_no(MODEL, question = \"...\", yes = \" Yes\", no = \" No\")` or `reward_model(pretrained(\"path/to/hf-reward-model\"))`";
        let Some((callee, args)) = as_call(&d.value) else {
            return self.diags.push(invalid_decl(&d.value, "a model", help));
        };
        // `reward_model(pretrained("DIR", ...))`: a Hugging Face sequence classifier.
        if callee == "reward_model"
            && let [Arg { name: None, value: inner, .. }] = args
            && let Some(("pretrained", inner_args)) = as_call(inner)
        {
            let (positional, mut params) = split_args(inner_args, &mut self.diags);
            if let Some(p) = positional.first() {
                params.insert(
                    0,
                    (Ident { name: "path".into(), span: p.span }, const_eval(p), p.span),
                );
            }
            if let Some(extra) = positional.get(1) {
                self.diags.push(too_many(extra.span, "pretrained", 1));
            }
            let init = ModelInit::PretrainedRewardModel;
            self.prog.models.push(ModelDecl { name: d.name.clone(), init, params, span: d.span });
            return;
        }
        let (positional, mut params) = split_args(args, &mut self.diags);
        let init = match callee {
            "builtin" | "reward_model" => {
                if let Some(p) = positional.first() {
                    let value = const_eval(p);
                    params
                        .insert(0, (Ident { name: "preset".into(), span: p.span }, value, p.span));
                }
                if let Some(extra) = positional.get(1) {
                    self.diags.push(too_many(extra.span, callee, 1));
                }
                let mut warm_start = None;
                if let Some(i) = params.iter().position(|(k, _, _)| k.name == "warm_start") {
                    let (_, _, span) = params.remove(i);
                    let arg = args
                        .iter()
                        .find(|a| a.name.as_ref().is_some_and(|n| n.name == "warm_start"));
                    let mut found = Vec::new();
                    warm_start = arg.and_then(|a| self.data_ref(&a.value, &mut found));
                    self.diags.extend(found);
                    if callee == "reward_model" {
                        self.diags.push(
                            Diagnostic::error(
                                "unknown-argument",
                                "`reward_model` takes no `warm_start`",
                            )
                            .primary(span, "not a parameter of `reward_model`")
                            .help("a reward model is trained in a stage with `pairs`"),
                        );
                    }
                }
                if callee == "builtin" {
                    ModelInit::Builtin { warm_start }
                } else {
                    ModelInit::RewardModel
                }
            }
            "pretrained" => {
                if let Some(p) = positional.first() {
                    params.insert(
                        0,
                        (Ident { name: "path".into(), span: p.span }, const_eval(p), p.span),
                    );
                }
                if let Some(extra) = positional.get(1) {
                    self.diags.push(too_many(extra.span, callee, 1));
                }
                ModelInit::Pretrained
            }
            "copy" | "yes_no" => {
                let Some(Expr { kind: ExprKind::Name(of), span }) = positional.first() else {
                    return self.diags.push(invalid_decl(&d.value, "a model", help));
                };
                if let Some(extra) = positional.get(1) {
                    self.diags.push(too_many(extra.span, callee, 1));
                }
                if self.kind_of(of) != Some(DeclKind::Model) {
                    return self.diags.push(unknown_name(
                        of,
                        *span,
                        self.declared_of(DeclKind::Model),
                        "a model",
                    ));
                }
                if of == &d.name.name {
                    return self.diags.push(
                        Diagnostic::error(
                            "binding-cycle",
                            format!("model `{of}` is a copy of itself"),
                        )
                        .primary(*span, "refers to the model being declared")
                        .help("copy another model"),
                    );
                }
                // Refused, but declared all the same: its uses are not errors of their own.
                if callee == "yes_no" && self.prog.is_reward_model(of) {
                    self.diags.push(
                        Diagnostic::error(
                            "invalid-declaration",
                            format!("`yes_no` reads a language model's answers; `{of}` is a reward model"),
                        )
                        .primary(*span, "a reward model")
                        .help("give `yes_no` a language model: `yes_no(policy)` starts the reward model from the policy's weights"),
                    );
                }
                let of = Ident { name: of.clone(), span: *span };
                match callee {
                    "copy" => ModelInit::Copy(of),
                    _ => ModelInit::YesNo(of),
                }
            }
            _ => return self.diags.push(invalid_decl(&d.value, "a model", help)),
        };
        self.prog.models.push(ModelDecl { name: d.name.clone(), init, params, span: d.span });
    }

    pub(super) fn lower_reward(&mut self, d: &Decl) {
        if let Some((callee @ ("command" | "http"), args)) = as_call(&d.value) {
            if let Some(spec) = self.external_reward(callee, args, &d.value) {
                let scorer = ScorerRef::External { reward: d.name.name.clone(), part: None };
                self.prog.rewards.push(RewardDecl {
                    name: d.name.clone(),
                    scorer,
                    external: Some(spec),
                    span: d.span,
                });
            }
            return;
        }
        let scorer = match d.value.as_path().as_deref() {
            Some([m]) if self.kind_of(m) == Some(DeclKind::Model) => {
                Some(ScorerRef::Model(m.to_string()))
            }
            Some([data, member]) if self.kind_of(data) == Some(DeclKind::Data) => self
                .prog
                .data_decl(data)
                .and_then(|d| d.spec.member(member))
                .filter(|m| m.kind == MemberKind::Verifier)
                .map(|_| ScorerRef::Verifier {
                    data: data.to_string(),
                    member: member.to_string(),
                }),
            _ => None,
        };
        match scorer {
            Some(scorer) => self.prog.rewards.push(RewardDecl {
                name: d.name.clone(),
                scorer,
                external: None,
                span: d.span,
            }),
            None => self.diags.push(invalid_decl(
                &d.value,
                "a reward",
                "a reward names a reward model (`reward rm = MODEL`), a verifier (`reward r = arith.correct`), a command (`reward r = command(\"python3 -m rlx_reward my_rewards:accuracy\")`) or a server (`reward r = http(\"http://127.0.0.1:5000/get_reward\")`)",
            )),
        }
    }

    /// `command("PROGRAM ARGS…", timeout = S)` or `http("URL", timeout = S)`.
    fn external_reward(
        &mut self,
        callee: &str,
        args: &[Arg],
        value: &Expr,
    ) -> Option<ExternalSpec> {
        let (positional, params) = split_args(args, &mut self.diags);
        let what = if callee == "command" { "the command line" } else { "the server's URL" };
        let help = if callee == "command" {
            "`command(\"python3 -m rlx_reward my_rewards:accuracy\", timeout = 60)`: the program and its arguments in one string, split into words as a shell would (no shell runs)"
        } else {
            "`http(\"http://127.0.0.1:5000/get_reward\", timeout = 60)`: an OpenRLHF-style reward server"
        };
        let Some(Expr { kind: ExprKind::Str(text), span }) = positional.first() else {
            let span = positional.first().map_or(value.span, |e| e.span);
            self.diags.push(
                Diagnostic::error(
                    "invalid-declaration",
                    format!("`{callee}` needs {what} as a string"),
                )
                .primary(span, "expected a string")
                .help(help),
            );
            return None;
        };
        if let Some(extra) = positional.get(1) {
            self.diags.push(too_many(extra.span, callee, 1));
        }
        let mut timeout_s = crate::rewards::DEFAULT_TIMEOUT_S;
        for (name, value, vspan) in &params {
            match (name.name.as_str(), value) {
                ("timeout", Const::Num(t)) if *t > 0.0 && t.is_finite() => timeout_s = *t,
                ("timeout", _) => self.diags.push(
                    Diagnostic::error(
                        "invalid-parameter",
                        "`timeout` must be a positive number of seconds",
                    )
                    .primary(*vspan, "not a positive number")
                    .help("e.g. `timeout = 60`"),
                ),
                (other, _) => self.diags.push(
                    Diagnostic::error(
                        "unknown-argument",
                        format!("`{callee}` has no parameter `{other}`"),
                    )
                    .primary(name.span, "not a parameter")
                    .help(format!("`{callee}` takes {what} and `timeout`")),
                ),
            }
        }
        let kind = if callee == "command" {
            match crate::rewards::argv::split(text) {
                Ok(argv) => ExternalKind::Command(argv),
                Err(e) => {
                    self.diags.push(
                        Diagnostic::error(
                            "invalid-declaration",
                            format!("this command line cannot be split into words: {e}"),
                        )
                        .primary(*span, "the command")
                        .help(help),
                    );
                    return None;
                }
            }
        } else {
            if !(text.starts_with("http://") || text.starts_with("https://")) {
                self.diags.push(
                    Diagnostic::error(
                        "invalid-declaration",
                        "a reward server's URL starts with `http://` or `https://`",
                    )
                    .primary(*span, "not an HTTP URL")
                    .help(help),
                );
                return None;
            }
            ExternalKind::Http(text.clone())
        };
        Some(ExternalSpec { kind, timeout_s, span: *span })
    }

    /// Resolves `data.member` for `prompts`, `pairs`, `data` and `warm_start`; reads the
    /// declarations only, so stages can call it too.
    pub(super) fn data_ref(&self, expr: &Expr, diags: &mut Vec<Diagnostic>) -> Option<DataRef> {
        let help = "name a member of a data set, e.g. `arith.problems`";
        match expr.as_path().as_deref() {
            Some([data, member]) => {
                if self.kind_of(data) != Some(DeclKind::Data) {
                    let names = self.declared_of(DeclKind::Data);
                    diags.push(unknown_name(data, expr.span, names, "a data set"));
                    return None;
                }
                let spec = self.prog.data_decl(data)?.spec;
                match spec.member(member) {
                    Some(m) => Some(DataRef {
                        data: data.to_string(),
                        member: member.to_string(),
                        kind: m.kind,
                        span: expr.span,
                    }),
                    None => {
                        diags.push(unknown_member(
                            data,
                            member,
                            expr.span,
                            spec.members.iter().map(|m| m.name),
                        ));
                        None
                    }
                }
            }
            _ => {
                diags.push(
                    Diagnostic::error("type-mismatch", "expected a data set member")
                        .primary(expr.span, "not `DATA.MEMBER`")
                        .help(help),
                );
                None
            }
        }
    }
}
