// BrainFM Web: upload and download over HTTP. The access token comes from the page state, which
// only a client that connected with the token receives.
(function () {
  // POST the file as the request body; the server streams it to a private folder (size-limited)
  // and opens it. Resolves to {ok, error}; the server also shows errors in the page.
  window.brainfmUpload = async function (file, token) {
    if (!file) return { ok: false, error: "no file" };
    try {
      const response = await fetch("brainfm/upload?name=" + encodeURIComponent(file.name), {
        method: "POST",
        headers: { "X-BrainFM-Token": token || "", "Content-Type": "application/octet-stream" },
        body: file,
      });
      const answer = await response.json().catch(() => ({}));
      return { ok: response.ok, error: answer.error || (response.ok ? "" : response.statusText) };
    } catch (e) {
      return { ok: false, error: String(e) };
    }
  };
  // The case folder as a zip (the browser's download).
  window.brainfmDownload = function (token) {
    window.location.assign("brainfm/download?token=" + encodeURIComponent(token || ""));
  };
})();
