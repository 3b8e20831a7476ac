//! Dockhand's model: the types the agent and the control endpoint share,
//! in ECS's own field names, with validation that names a JSON path.
//!
//! - [`taskdef`]: ECS task definitions (`RegisterTaskDefinition`'s shape).
//! - [`service`]: services (`CreateService`'s shape), deployment
//!   configuration and the routing fields ECS keeps in an ALB target group;
//!   a standalone service file is one [`service::ServiceSpec`].
//! - [`route`]: what a `loadBalancers` entry means for a proxy, in plain
//!   values (the agent turns it into its proxy's types).
//! - [`task`]: task and container states and the state-change reports an
//!   agent sends upward (`SubmitTaskStateChange`'s shape).
//! - [`instance`]: container instances: resources and attributes.
//! - [`rollout`]: which tasks a service starts and stops to reach its
//!   count and revision within `deploymentConfiguration` (the agent plans
//!   one host with it, the control endpoint a cluster).
//! - [`protocol`]: the calls between a managed agent and the control
//!   endpoint.
//! - [`conf`]: `KEY=VALUE` configuration files.
//!
//! Nothing here does I/O, and nothing depends on an async runtime, Docker or
//! the proxy: parsing is a pure function of its input, which is untrusted
//! (service files, API requests), so every entry point returns every
//! problem found, each at its path, and none panics.

#![forbid(unsafe_code)]

pub mod conf;
pub mod error;
pub mod instance;
pub mod json;
pub mod protocol;
pub mod rollout;
pub mod route;
pub mod service;
pub mod task;
pub mod taskdef;

pub use error::SpecError;
pub use service::ServiceSpec;
pub use taskdef::TaskDefinition;
