//! Maths: element-wise operations. Inputs share one level `L`; scalars combine with any level.
//! The operators `+ - * / ^` and prefix `-` lower to `add`, `sub`, `mul`, `div`, `pow` and `neg`.

use candle_core::{DType, Result, Tensor};

use crate::blocks::ctx::{Ctx, Value};
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

pub static ADD: BlockSpec =
    BlockSpec { name: "add", summary: "a + b", formula: "a + b", forward: Some(add), ..BINARY };
pub static SUB: BlockSpec =
    BlockSpec { name: "sub", summary: "a − b", formula: "a − b", forward: Some(sub), ..BINARY };
pub static MUL: BlockSpec =
    BlockSpec { name: "mul", summary: "a × b", formula: "a · b", forward: Some(mul), ..BINARY };
pub static DIV: BlockSpec =
    BlockSpec { name: "div", summary: "a ÷ b", formula: "a / b", forward: Some(div), ..BINARY };
pub static POW: BlockSpec = BlockSpec {
    name: "pow",
    summary: "a to the power b",
    formula: "a^b",
    forward: Some(pow),
    ..BINARY
};
pub static MIN: BlockSpec = BlockSpec {
    name: "min",
    summary: "element-wise minimum",
    formula: "min(a, b)",
    forward: Some(min),
    ..BINARY
};
pub static MAX: BlockSpec = BlockSpec {
    name: "max",
    summary: "element-wise maximum",
    formula: "max(a, b)",
    forward: Some(max),
    ..BINARY
};
pub static NEG: BlockSpec =
    BlockSpec { name: "neg", summary: "negation", formula: "−x", forward: Some(neg), ..UNARY };
pub static ABS: BlockSpec = BlockSpec {
    name: "abs",
    summary: "absolute value",
    formula: "|x|",
    forward: Some(abs),
    ..UNARY
};
pub static SQUARE: BlockSpec =
    BlockSpec { name: "square", summary: "square", formula: "x²", forward: Some(square), ..UNARY };
pub static SQRT: BlockSpec =
    BlockSpec {
        name: "sqrt", summary: "square root", formula: "√x", forward: Some(sqrt), ..UNARY
    };
pub static EXP: BlockSpec =
    BlockSpec { name: "exp", summary: "exponential", formula: "e^x", forward: Some(exp), ..UNARY };
pub static LOG: BlockSpec = BlockSpec {
    name: "log",
    summary: "natural logarithm",
    formula: "ln x",
    forward: Some(log),
    ..UNARY
};

pub static STOPGRAD: BlockSpec = BlockSpec {
    name: "stopgrad",
    summary: "the same value, with no gradient flowing back through it",
    formula: "x in the forward pass, 0 in the backward pass",
    grad: OutputGrad::Never,
    forward: Some(stopgrad),
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
    forward: Some(clamp),
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
    forward: Some(where_),
    ..UNARY
};

/// `lo ≤ hi` for blocks with both bounds.
pub fn lo_below_hi(p: &dyn Fn(&str) -> Option<f64>) -> Option<String> {
    match (p("lo"), p("hi")) {
        (Some(lo), Some(hi)) if lo > hi => Some(format!("`lo` ({lo}) is above `hi` ({hi})")),
        _ => None,
    }
}

fn binary(ctx: &Ctx, f: fn(&Tensor, &Tensor) -> Result<Tensor>) -> Result<Value> {
    Ok(Value::Tensor(f(ctx.tensor(0)?, ctx.tensor(1)?)?))
}

fn unary(ctx: &Ctx, f: fn(&Tensor) -> Result<Tensor>) -> Result<Value> {
    Ok(Value::Tensor(f(ctx.tensor(0)?)?))
}

/// The value of a constant scalar operand (a number in the recipe), which takes the cheaper
/// `affine` path instead of a broadcast binary op.
fn constant(t: &Tensor) -> Option<f64> {
    if t.rank() == 0 && !t.track_op() {
        t.to_dtype(DType::F64).ok()?.to_scalar::<f64>().ok()
    } else {
        None
    }
}

fn add(ctx: &Ctx) -> Result<Value> {
    let (a, b) = (ctx.tensor(0)?, ctx.tensor(1)?);
    match (constant(a), constant(b)) {
        (None, Some(c)) => Ok(Value::Tensor(a.affine(1.0, c)?)),
        (Some(c), None) => Ok(Value::Tensor(b.affine(1.0, c)?)),
        _ => binary(ctx, Tensor::broadcast_add),
    }
}

fn sub(ctx: &Ctx) -> Result<Value> {
    let (a, b) = (ctx.tensor(0)?, ctx.tensor(1)?);
    match (constant(a), constant(b)) {
        (None, Some(c)) => Ok(Value::Tensor(a.affine(1.0, -c)?)),
        (Some(c), None) => Ok(Value::Tensor(b.affine(-1.0, c)?)),
        _ => binary(ctx, Tensor::broadcast_sub),
    }
}

fn mul(ctx: &Ctx) -> Result<Value> {
    let (a, b) = (ctx.tensor(0)?, ctx.tensor(1)?);
    match (constant(a), constant(b)) {
        (None, Some(c)) => Ok(Value::Tensor(a.affine(c, 0.0)?)),
        (Some(c), None) => Ok(Value::Tensor(b.affine(c, 0.0)?)),
        _ => binary(ctx, Tensor::broadcast_mul),
    }
}

fn div(ctx: &Ctx) -> Result<Value> {
    let (a, b) = (ctx.tensor(0)?, ctx.tensor(1)?);
    match constant(b) {
        Some(c) if c != 0.0 && constant(a).is_none() => Ok(Value::Tensor(a.affine(1.0 / c, 0.0)?)),
        _ => binary(ctx, Tensor::broadcast_div),
    }
}

fn min(ctx: &Ctx) -> Result<Value> {
    binary(ctx, Tensor::broadcast_minimum)
}

fn max(ctx: &Ctx) -> Result<Value> {
    binary(ctx, Tensor::broadcast_maximum)
}

/// A constant exponent uses `powf`, which also handles negative bases (`(-2) ^ 2 = 4`).
fn pow(ctx: &Ctx) -> Result<Value> {
    let (a, b) = (ctx.tensor(0)?, ctx.tensor(1)?);
    if b.rank() == 0 && !b.track_op() {
        return Ok(Value::Tensor(a.powf(b.to_dtype(DType::F64)?.to_scalar::<f64>()?)?));
    }
    Ok(Value::Tensor(a.broadcast_pow(b)?))
}

fn neg(ctx: &Ctx) -> Result<Value> {
    unary(ctx, Tensor::neg)
}

fn abs(ctx: &Ctx) -> Result<Value> {
    unary(ctx, Tensor::abs)
}

fn square(ctx: &Ctx) -> Result<Value> {
    unary(ctx, Tensor::sqr)
}

fn sqrt(ctx: &Ctx) -> Result<Value> {
    unary(ctx, Tensor::sqrt)
}

fn exp(ctx: &Ctx) -> Result<Value> {
    unary(ctx, Tensor::exp)
}

fn log(ctx: &Ctx) -> Result<Value> {
    unary(ctx, Tensor::log)
}

fn stopgrad(ctx: &Ctx) -> Result<Value> {
    Ok(Value::Tensor(ctx.tensor(0)?.detach()))
}

fn clamp(ctx: &Ctx) -> Result<Value> {
    let x = ctx.tensor(0)?;
    Ok(Value::Tensor(crate::blocks::fused::clamp(x, ctx.opt_num("lo"), ctx.opt_num("hi"))?))
}

fn where_(ctx: &Ctx) -> Result<Value> {
    let (c, a, b) = (ctx.tensor(0)?, ctx.tensor(1)?, ctx.tensor(2)?);
    // Broadcast the three to the largest shape among them.
    let shape = [c, a, b]
        .iter()
        .max_by_key(|t| t.rank())
        .map(|t| t.shape().clone())
        .unwrap_or_else(|| a.shape().clone());
    let cond = c.ne(0.0)?.broadcast_as(&shape)?;
    Ok(Value::Tensor(cond.where_cond(&a.broadcast_as(&shape)?, &b.broadcast_as(&shape)?)?))
}
