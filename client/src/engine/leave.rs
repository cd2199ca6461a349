//! Leaving a DGroup, and learning that another member left (docs/PROTOCOL.md "Leave").
//!
//! The leaver announces it with a control message in its own Send Group (an application
//! message whose envelope has [`LEAVE_CONTENT_TYPE`]), then forgets the DGroup's key
//! material. A receiver treats the announcement like a removal of its sender.

use openmls::group::{GroupId, MlsGroup};

use super::ctx::Ctx;
use super::ids::{DGroupId, PskId};
use super::store::send_groups::{self, SendGroupRow};
use super::store::{dgroups, last_resort, members, outbox, psks, waiting};
use super::{Effect, EngineError, Event};

/// Content type of the envelope that announces a leave (docs/PROTOCOL.md "Leave"); its body
/// is empty.
pub const LEAVE_CONTENT_TYPE: &str = "application/vnd.dmls.leave";

impl Ctx<'_> {
    /// We leave `d`: the leave announcement goes into our Send Group when others can read it
    /// (it is active and we were not removed), then every Send Group state, PSK and waiting
    /// message of `d` is deleted and its Send Groups are no longer followed. Returns whether the
    /// announcement was queued.
    pub(crate) fn leave(&mut self, d: &DGroupId, now_ms: u64) -> Result<bool, EngineError> {
        let Some((_, _, we_removed)) = self.config(d)? else {
            return Err(EngineError::UnknownDGroup(d.to_hex()));
        };
        if dgroups::left_ms(self.conn, d)?.is_some() {
            return Err(EngineError::InvalidArgument(
                "you already left this group".into(),
            ));
        }
        let announced = if we_removed {
            false
        } else {
            match self.active_own(d) {
                Ok(_) => {
                    self.send(d, LEAVE_CONTENT_TYPE, &[], now_ms)?;
                    true
                }
                // Our Send Group was never set up (the key-package claim is unanswered): nobody
                // holds it, so nobody could read an announcement.
                Err(EngineError::NotReady(_)) => false,
                Err(e) => return Err(e),
            }
        };
        self.forget_dgroup(d)?;
        dgroups::set_left(self.conn, d, now_ms)?;
        Ok(announced)
    }

    /// Deletes the key material of every Send Group of `d` (openmls state, PSKs), what waits
    /// there, and the relay work still queued for it other than posts.
    fn forget_dgroup(&mut self, d: &DGroupId) -> Result<(), EngineError> {
        for sg in self.send_groups_of(d)? {
            let gid = sg.group_id;
            self.deferred.take_group(&gid);
            self.groups.remove(&gid);
            if let Some(mut group) =
                MlsGroup::load(&self.provider.storage, &GroupId::from_slice(&gid))
                    .map_err(|e| EngineError::mls("loading group", e))?
            {
                group
                    .delete(&self.provider.storage)
                    .map_err(|e| EngineError::mls("deleting group state", e))?;
            }
            for (epoch, _) in psks::held(self.conn, &gid)? {
                self.delete_psk(&PskId {
                    epoch,
                    group_id: gid,
                })?;
            }
            waiting::delete_group(self.conn, &gid)?;
            last_resort::delete(self.conn, &gid)?;
        }
        self.write_send_group(|conn| send_groups::delete_of_dgroup(conn, d))?;
        members::removals_done(self.conn, d)?;
        members::clear_missing(self.conn, d)?;
        for item in outbox::all(self.conn)? {
            if matches!(&item.effect, Effect::ClaimKeyPackages { dgroup_id, .. } if dgroup_id == d)
            {
                outbox::delete(self.conn, item.id)?;
            }
        }
        Ok(())
    }

    /// The owner of `sg` announced that it leaves: it counts as removed from then on, as if a
    /// commit had removed it (its Send Group stops at the epoch we hold).
    pub(crate) fn member_left(&mut self, sg: &SendGroupRow) -> Result<Vec<Event>, EngineError> {
        if !self.note_removed(&sg.dgroup_id, &sg.owner)? {
            return Ok(Vec::new());
        }
        self.removals_merged = true;
        Ok(vec![Event::MemberLeft {
            dgroup: sg.dgroup_id,
            member: sg.owner.clone(),
        }])
    }
}
