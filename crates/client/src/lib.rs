#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod attachment;
mod business;
mod client;
mod directory;
pub mod error;
pub mod event;
mod groups;
mod http;
mod keystore;
pub mod links;
mod mls;
pub mod payload;
pub mod plan;
mod receive;
mod state;
mod storage;
pub mod verify;

pub use attachment::{AttachmentOptions, AttachmentReceipt, AttachmentRef};
pub use business::{SendOutcome, Sender};
pub use client::{
    ClientOptions, ConversationInfo, DeviceSummary, KEY_PACKAGE_BATCH, KEY_PACKAGE_LOW_WATER,
    MAX_COMMIT_ATTEMPTS, SealClient, SendReceipt,
};
pub use error::{Error, Result};
pub use event::{
    AttachmentMessage, Event, MembershipChange, MembershipKind, ProblemEvent, ProblemKind,
    TextMessage,
};
pub use keystore::Argon2Params;
pub use payload::Payload;
pub use plan::{Content, Field};
pub use verify::VerifyError;
