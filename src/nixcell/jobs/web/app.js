// nixcell jobs web page: picks the view and starts it (loaded last, after util.js, list.js
// and job.js; every job-derived string goes in with textContent — see util.js).
"use strict";

// ---- start -----------------------------------------------------------------------------------

// One page, two views: /jobs/ID shows a job, anything else the list.
const JOB_PATH = /^\/jobs\/([0-9]{1,18})$/;

async function main() {
  const who = await signIn();
  showCaller(who);
  const match = JOB_PATH.exec(location.pathname);
  $(match ? "job-view" : "list-view").hidden = false;
  if (match) await startJob(Number(match[1]));
  else await startList();
}

main().catch((err) => showError(err.message || String(err)));
