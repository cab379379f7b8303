//! Batches: the changes a mount answered itself under its write leases, sent together
//! (`BatchRequest::Batch`, one [`Mutation::Batch`]). Each change is the request the mount
//! would have sent, and is held to that request's rules: its family's permission check
//! (made as the batch reaches it, against what the changes before it left), the leases it
//! needs recalled, and the mutation its answer would make, with the time and, for a new
//! inode, the number the mount gave it.

use std::collections::HashSet;

use super::{Caller, Family, Grant, Leasing};
use crate::server::{MetadServer, Outcome};
use crate::store::{Batched, Mutation, NewInode, View};
use shardfs_chunk_api::ChunkId;
use shardfs_meta_api::proto::{
    AttrRequest, BatchRequest, DataRequest, MAX_BATCH, MetaError, MetaReply, MetaRequest,
    NameRequest, Queued, RenameMode, XattrRequest,
};

impl Family for BatchRequest {
    /// Only the batch's shape: each change's own check is made as the batch is applied.
    fn permitted(&self, _: &dyn View) -> Result<(), MetaError> {
        let BatchRequest::Batch { changes, .. } = self;
        if changes.len() > MAX_BATCH {
            return Err(MetaError::Invalid(format!("a batch of more than {MAX_BATCH} changes")));
        }
        changes.iter().try_for_each(|queued| mutation(queued).map(drop))
    }

    /// What each change needs, once each.
    fn leasing(&self) -> Leasing<'_> {
        let BatchRequest::Batch { changes, .. } = self;
        let mut needs = Vec::new();
        let mut seen = HashSet::new();
        for queued in changes {
            if let Leasing::Covered { needs: its, .. } = leasing(&queued.request) {
                needs.extend(its.into_iter().filter(|need| seen.insert(*need)));
            }
        }
        Leasing::Covered { needs, grant: Grant::Batched }
    }

    fn answer(self, server: &MetadServer, caller: Caller) -> Outcome {
        let BatchRequest::Batch { changes, leases_of } = self;
        // Made under leases this server never granted: other mounts may have changed the
        // same files since, unless the grace period still keeps them waiting. Checked here,
        // inside the request's number: a retry of a batch applied in the grace period gets
        // its first answer.
        if leases_of != server.grace.incarnation() && !server.grace.reclaiming(caller.holder) {
            return Outcome::Answered(Err(MetaError::LeasesLost));
        }
        let committed: Vec<Vec<ChunkId>> = changes.iter().map(committed_chunks).collect();
        let batched = match server.store.batch(caller.holder, changes) {
            Ok(batched) => batched,
            Err(e) => return Outcome::Answered(Err(e)),
        };
        // Referenced now, as after a `CommitWrite`: refcounts protect these chunks.
        for chunks in committed.into_iter().take(batched.applied as usize) {
            server.intents.clear(caller.holder, chunks);
        }
        // The mount that took an inode's last name drops its lease on it (as after an
        // `Unlink`), or the inode would linger on it.
        if !batched.nameless.is_empty() {
            let mut table = server.leases.lock();
            for &ino in &batched.nameless {
                table.remove(caller.holder, ino);
            }
            drop(table);
            server.leases.wake();
        }
        let Batched { applied, failed, made, .. } = batched;
        Outcome::Answered(Ok(MetaReply::Batched { applied, failed, made }))
    }
}

/// The chunks a change's commit points at (none for other changes).
fn committed_chunks(queued: &Queued) -> Vec<ChunkId> {
    match &queued.request {
        MetaRequest::Data(DataRequest::CommitWrite { extents, .. }) => {
            extents.iter().map(|e| e.chunk).collect()
        }
        _ => Vec::new(),
    }
}

fn leasing(request: &MetaRequest) -> Leasing<'_> {
    match request {
        MetaRequest::Names(request) => request.leasing(),
        MetaRequest::Attrs(request) => request.leasing(),
        MetaRequest::Data(request) => request.leasing(),
        MetaRequest::Xattrs(request) => request.leasing(),
        // Refused by `permitted`.
        _ => Leasing::Uncovered,
    }
}

/// The mutation `queued` makes, once its caller is found allowed to make it as `view` (the
/// database as the batch's earlier changes left it) stands.
pub(crate) fn checked(view: &dyn View, queued: &Queued) -> Result<Mutation, MetaError> {
    match &queued.request {
        MetaRequest::Names(request) => request.permitted(view)?,
        MetaRequest::Attrs(request) => request.permitted(view)?,
        MetaRequest::Data(request) => request.permitted(view)?,
        MetaRequest::Xattrs(request) => request.permitted(view)?,
        _ => {}
    }
    mutation(queued)
}

/// The mutation `queued` makes, or why no batch may carry it.
fn mutation(queued: &Queued) -> Result<Mutation, MetaError> {
    let (ino, now) = (queued.ino, queued.now);
    let makes = matches!(
        queued.request,
        MetaRequest::Names(
            NameRequest::MakeNode { .. }
                | NameRequest::MakeDir { .. }
                | NameRequest::Symlink { .. }
        )
    );
    if makes != (ino != 0) {
        let why = "a batch's change carries an inode number if and only if it makes an inode";
        return Err(MetaError::Invalid(why.into()));
    }
    let create = |parent, name: &Vec<u8>, new| Mutation::Create {
        ino,
        parent,
        name: name.clone(),
        new,
        now,
    };
    Ok(match queued.request.clone() {
        MetaRequest::Names(request) => match request {
            NameRequest::MakeNode { parent, name, mode, rdev, cred } => {
                create(parent, &name, NewInode::node(mode, rdev, cred)?)
            }
            NameRequest::MakeDir { parent, name, mode, cred } => {
                create(parent, &name, NewInode::dir(mode, cred))
            }
            NameRequest::Symlink { parent, name, target, cred } => {
                create(parent, &name, NewInode::symlink(&target, cred)?)
            }
            NameRequest::Link { ino, new_parent, new_name, .. } => {
                Mutation::Link { ino, new_parent, new_name, now }
            }
            NameRequest::Unlink { parent, name, .. } => Mutation::Unlink { parent, name, now },
            NameRequest::RemoveDir { parent, name, .. } => {
                Mutation::RemoveDir { parent, name, now }
            }
            NameRequest::Rename { parent, name, new_parent, new_name, mode, .. }
                if !matches!(mode, RenameMode::Whiteout { .. }) =>
            {
                Mutation::Rename { parent, name, new_parent, new_name, mode, whiteout: None, now }
            }
            other => return Err(unbatchable(&other.into())),
        },
        MetaRequest::Attrs(AttrRequest::SetAttr { ino, changes, .. }) => {
            Mutation::SetAttr { ino, changes, now }
        }
        MetaRequest::Xattrs(XattrRequest::SetXattr { ino, name, value, mode, cred }) => {
            Mutation::SetXattr { ino, name, value, mode, cred, now }
        }
        MetaRequest::Xattrs(XattrRequest::RemoveXattr { ino, name, .. }) => {
            Mutation::RemoveXattr { ino, name, now }
        }
        // The chunks stored on chunkds were prepared (and so are protected by write
        // intents) before the change was queued; the intents end once it is applied.
        MetaRequest::Data(DataRequest::CommitWrite { ino, stored, inline, extents, mtime }) => {
            Mutation::CommitWrite { ino, stored, inline, extents, mtime, now }
        }
        other => return Err(unbatchable(&other)),
    })
}

fn unbatchable(request: &MetaRequest) -> MetaError {
    MetaError::Invalid(format!("a batch cannot carry {}", request.op()))
}
