//! `rlx graph`: a recipe's dataflow graphs and the runtime's plan, as text or Graphviz.

use std::process::ExitCode;

use rlx::render::Style;

use crate::args::{GraphArgs, GraphFormat};
use crate::ui;

pub fn main(args: GraphArgs, style: Style) -> Result<ExitCode, String> {
    let Some((_, analysis)) = ui::analyze_clean(&args.file, style)? else {
        return Ok(ui::findings());
    };
    let checked = ui::checked(&analysis)?;
    let stage = args.stage.as_deref();
    if let Some(s) = stage
        && !checked.program.stages.iter().any(|st| st.name.name == s)
    {
        let names: Vec<&str> =
            checked.program.stages.iter().map(|st| st.name.name.as_str()).collect();
        return Err(format!("no stage `{s}`; the stages are {}", names.join(", ")));
    }
    let opts = rlx::graph_view::ViewOptions { resolved: args.resolved };
    match args.format {
        GraphFormat::Text => print!("{}", rlx::graph_view::text(checked, stage, opts)),
        GraphFormat::Dot => print!("{}", rlx::graph_view::dot(checked, stage, opts)),
    }
    Ok(ExitCode::SUCCESS)
}
