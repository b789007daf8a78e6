//! Maths: element-wise operations. Inputs share one level `L`; scalars combine with any level.
//! The operators `+ - * / ^` and prefix `-` lower to `add`, `sub`, `mul`, `div`, `pow` and `neg`.

use crate::blocks::spec::*;

const UNARY: BlockSpec = BlockSpec {
    family: Family::Maths,
    source: "element-wise maths",
    inputs: &[generic("x", "any value")],
    output: OutputKind::Generic,
    ..BASE
};

const BINARY: BlockSpec =
    BlockSpec { inputs: &[generic("a", "left operand"), generic("b", "right operand")], ..UNARY };

pub static ADD: BlockSpec = BlockSpec { name: "add", summary: "a + b", formula: "a + b", ..BINARY };
pub static SUB: BlockSpec =
    BlockSpec { name: "sub", summary: "a − b", formula: "a − b", ..BINARY };
pub static MUL: BlockSpec =
    BlockSpec { name: "mul", summary: "a × b", formula: "a · b", ..BINARY };
pub static DIV: BlockSpec =
    BlockSpec { name: "div", summary: "a ÷ b", formula: "a / b", ..BINARY };
pub static POW: BlockSpec =
    BlockSpec { name: "pow", summary: "a to the power b", formula: "a^b", ..BINARY };
pub static MIN: BlockSpec =
    BlockSpec { name: "min", summary: "element-wise minimum", formula: "min(a, b)", ..BINARY };
pub static MAX: BlockSpec =
    BlockSpec { name: "max", summary: "element-wise maximum", formula: "max(a, b)", ..BINARY };
pub static NEG: BlockSpec =
    BlockSpec { name: "neg", summary: "negation", formula: "−x", ..UNARY };
pub static ABS: BlockSpec =
    BlockSpec { name: "abs", summary: "absolute value", formula: "|x|", ..UNARY };
pub static SQUARE: BlockSpec =
    BlockSpec { name: "square", summary: "square", formula: "x²", ..UNARY };
pub static SQRT: BlockSpec =
    BlockSpec { name: "sqrt", summary: "square root", formula: "√x", ..UNARY };
pub static EXP: BlockSpec =
    BlockSpec { name: "exp", summary: "exponential", formula: "e^x", ..UNARY };
pub static LOG: BlockSpec =
    BlockSpec { name: "log", summary: "natural logarithm", formula: "ln x", ..UNARY };

pub static STOPGRAD: BlockSpec = BlockSpec {
    name: "stopgrad",
    summary: "the same value, with no gradient flowing back through it",
    formula: "x in the forward pass, 0 in the backward pass",
    grad: OutputGrad::Never,
    ..UNARY
};

pub static CLAMP: BlockSpec = BlockSpec {
    name: "clamp",
    summary: "clip into [lo, hi]",
    formula: "min(max(x, lo), hi)",
    params: &[
        ParamSpec {
            name: "lo",
            ty: ParamTy::Float,
            default: DefaultRule::Off,
            range: Range::Any,
            doc: "lower bound; `none` for none",
        },
        ParamSpec {
            name: "hi",
            ty: ParamTy::Float,
            default: DefaultRule::Off,
            range: Range::Any,
            doc: "upper bound; `none` for none",
        },
    ],
    validate: Some(lo_below_hi),
    ..UNARY
};

pub static WHERE: BlockSpec = BlockSpec {
    name: "where",
    summary: "pick `then` where the condition is non-zero, else `otherwise`",
    formula: "cond ≠ 0 ? then : otherwise",
    inputs: &[
        InputSpec {
            name: "cond",
            kind: InputKind::Tensor(LevelRule::Generic, GradRule::Detached),
            doc: "condition, e.g. a 0/1 verifier",
        },
        generic("then", "value where the condition holds"),
        generic("otherwise", "value elsewhere"),
    ],
    ..UNARY
};

/// `lo ≤ hi` for blocks with both bounds.
pub fn lo_below_hi(p: &dyn Fn(&str) -> Option<f64>) -> Option<String> {
    match (p("lo"), p("hi")) {
        (Some(lo), Some(hi)) if lo > hi => Some(format!("`lo` ({lo}) is above `hi` ({hi})")),
        _ => None,
    }
}
