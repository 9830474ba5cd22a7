//! The wire vocabulary of Quasicrystal: every type that crosses a process boundary or is persisted.
//!
//! Nothing here decides anything and nothing does IO. Ids, resource amounts, workload and node
//! specs (with their TOML parser and located errors), fleet messages, ledger events and the
//! versioned envelope all live here, so the wire format has exactly one home.

pub mod bounds;
pub mod envelope;
pub mod event;
pub mod frame;
pub mod identity;
pub mod ids;
pub mod mesh;
pub mod message;
pub mod resources;
pub mod spec;
pub mod task;
pub mod task_bus;
pub mod trust;

pub use envelope::{Envelope, MessageId, WIRE_VERSION, WireError};
pub use event::{DeclineFrom, Event, LocalVerdict, ModelStep, OfferFrom, Record, SenseReason};
pub use frame::{Frame, FrameError, FrameKind};
pub use identity::NodeRecord;
pub use ids::{InstanceId, NameError, NodeId, PlacementId, ServiceName, TaskId};
pub use message::{
    Composite, DeclineReason, Demand, ExitOutcome, InstanceSummary, Message, ModelState,
    ModelSummary, NodeStatus, Offer, Resource, Role, SingletonClaim,
};
pub use resources::{Capacity, Committed, GpuCapacity, GpuLoad, InstanceLoad, Load, Resources};
pub use spec::{
    Authority, HaPattern, HealthCheck, InvalidField, MAX_LEVEL, ModelDiscipline, ModelSpec,
    ModelTier, NodeSpec, Probe, Protocol, Publish, PublishFormat, ServiceAddress, SpecDocument,
    SpecError, WorkloadKind, WorkloadSpec, decode_model, decode_workload, parse_spec,
};
pub use task::{OnInvalid, TaskClass, TaskSpec, Validation, decode_task, parse_task};
