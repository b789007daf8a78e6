//! Reading finished runs back: metric curves (`curves`), plots of them (`plot`), and
//! `rlx compare`, which runs recipes over seeds and reports them side by side (`compare`), and
//! `rlx values`, which scores a run's value estimates against Monte-Carlo truth (`values`).

pub mod compare;
pub mod curves;
pub mod paired;
pub mod plot;
pub mod provenance;
pub mod values;
pub mod verdict;
