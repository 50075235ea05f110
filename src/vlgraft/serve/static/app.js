// vlgraft serve's demo page. It talks to the same OpenAI-compatible API as any other client
// (POST v1/chat/completions with stream: true), so what works here works from the openai package too.
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  model: $("model-name"), recipe: $("recipe"), keyRow: $("api-key-row"), key: $("api-key"),
  messages: $("messages"), error: $("error"), input: $("image-input"), preview: $("preview"),
  form: $("composer"), question: $("question"), send: $("send"), clear: $("clear"),
};
const KEY_STORAGE = "vlgraft.apiKey";

const state = {
  model: null,     // model id from v1/vlgraft/info, sent back in each request
  limits: {},      // the server's max_images / max_tokens / max_body_bytes
  image: null,     // data: URL of the current image, or null for a text-only chat
  history: [],     // OpenAI messages; the server is stateless, so every turn re-sends all of it
  abort: null,     // AbortController of the answer streaming now, so Clear can stop it
};

// ---- server info: model id, recipe, whether a key is needed --------------------------------------

async function loadInfo() {
  try {
    const info = await fetchJSON("v1/vlgraft/info");
    state.model = info.model;
    state.limits = info.limits || {};
    els.model.textContent = info.model;
    els.recipe.textContent = info.recipe || "";
    els.keyRow.hidden = !info.auth;
  } catch (err) {
    showError(`Could not read the server's info: ${err.message}`);
  }
}

async function fetchJSON(url) {
  const resp = await fetch(url, { headers: authHeaders() });
  if (!resp.ok) throw new Error(await errorMessage(resp));
  return resp.json();
}

function authHeaders() {
  const key = els.key.value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// The key survives a reload (localStorage is per origin, so it stays with this server).
els.key.value = localStorage.getItem(KEY_STORAGE) || "";
els.key.addEventListener("input", () => localStorage.setItem(KEY_STORAGE, els.key.value.trim()));

// ---- the image: file input or clipboard paste ----------------------------------------------------

els.input.addEventListener("change", () => {
  if (els.input.files.length) setImage(els.input.files[0]);
});

// Paste anywhere on the page (a screenshot, an image copied from another tab); text pastes are
// left alone so pasting into the question box still works.
document.addEventListener("paste", (event) => {
  const item = [...event.clipboardData.items].find((i) => i.kind === "file" && i.type.startsWith("image/"));
  if (!item) return;
  event.preventDefault();
  setImage(item.getAsFile());
});

function setImage(file) {
  if (!file.type.startsWith("image/")) return showError(`${file.name} is not an image`);
  // The file is sent as is (no re-encoding), so the model sees exactly the uploaded pixels.
  const reader = new FileReader();
  reader.onload = () => {
    const max = state.limits.max_body_bytes;
    if (max && reader.result.length > max) {
      return showError(`The image is too large: ${mb(reader.result.length)} as sent, the server accepts ${mb(max)}.`);
    }
    // The image belongs to the first user message: a new one starts a new conversation.
    clearChat();
    state.image = reader.result;
    els.preview.src = reader.result;
    els.preview.hidden = false;
    els.question.focus();
  };
  reader.onerror = () => showError(`Could not read ${file.name}`);
  reader.readAsDataURL(file);
}

const mb = (bytes) => `${(bytes / 1e6).toFixed(1)} MB`;

// ---- sending a question and streaming the answer -------------------------------------------------

els.form.addEventListener("submit", (event) => {
  event.preventDefault();
  ask();
});

// Enter sends, Shift+Enter adds a line; not while an IME is composing (Enter then picks a word).
els.question.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ask();
  }
});

async function ask() {
  const text = els.question.value.trim();
  if (!text || state.abort) return;  // nothing to send, or an answer is still streaming
  hideError();
  // Image parts come before the text in the first user message, as the server expects.
  const content = state.history.length === 0 && state.image
    ? [{ type: "image_url", image_url: { url: state.image } }, { type: "text", text }]
    : text;
  state.history.push({ role: "user", content });
  const asked = addMessage("user", text, state.history.length === 1 ? state.image : null);
  els.question.value = "";
  const bubble = addMessage("assistant", "");
  bubble.classList.add("pending");

  const abort = new AbortController();
  state.abort = abort;
  els.send.disabled = true;
  try {
    const answer = await streamAnswer(abort.signal, (piece) => {
      bubble.classList.remove("pending");
      bubble.textContent += piece;
      scrollDown();
    });
    bubble.textContent = answer.trim();
    state.history.push({ role: "assistant", content: answer.trim() });
  } catch (err) {
    if (abort.signal.aborted) return;  // Clear stopped it: the chat is gone already
    // The failed turn leaves the history, and its question goes back into the box to retry.
    state.history.pop();
    asked.classList.add("failed");
    els.question.value = text;
    bubble.classList.add("error");
    bubble.textContent = err.message;
    showError(err.message);
  } finally {
    bubble.classList.remove("pending");
    bubble.classList.add("done");
    if (state.abort === abort) {
      state.abort = null;
      els.send.disabled = false;
    }
  }
}

// POST the history with stream: true and read the Server-Sent Events as they arrive: each event is
// "data: <chat.completion.chunk JSON>", the last one "data: [DONE]". Returns the whole answer.
async function streamAnswer(signal, onPiece) {
  const body = { model: state.model, messages: state.history, stream: true };
  const resp = await fetch("v1/chat/completions", {
    method: "POST", signal, body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", Accept: "text/event-stream", ...authHeaders() },
  });
  if (!resp.ok) throw new Error(await errorMessage(resp));

  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", answer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error("The connection closed before the answer was complete.");
    // Events end with a blank line; a network read may hold several events or part of one.
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const data = eventData(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (data === null) continue;  // a comment or keep-alive
      if (data === "[DONE]") return answer;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message || JSON.stringify(chunk.error));  // failed midway
      const piece = chunk.choices?.[0]?.delta?.content;
      if (piece) {
        answer += piece;
        onPiece(piece);
      }
    }
  }
}

// The data of one SSE event: its "data:" lines joined by newlines, or null if it has none.
function eventData(event) {
  const lines = event.split("\n").filter((l) => l.startsWith("data:"));
  if (!lines.length) return null;
  return lines.map((l) => l.slice(5).replace(/^ /, "")).join("\n");
}

// The server's message from an OpenAI-style error body ({"error": {"message": ...}}), else the status.
async function errorMessage(resp) {
  let message = `${resp.status} ${resp.statusText}`;
  try {
    const body = await resp.json();
    if (body.error?.message) message = body.error.message;
  } catch { /* not JSON: keep the status line */ }
  if (resp.status === 401 && !els.key.value) {
    els.keyRow.hidden = false;  // the key field, even if the info call could not say it is needed
    message += " (enter the API key above)";
  }
  return message;
}

// ---- the chat on screen ---------------------------------------------------------------------------

function addMessage(role, text, image = null) {
  const el = document.createElement("div");
  el.className = `message ${role}`;
  if (image) {
    const img = document.createElement("img");
    img.src = image;
    img.alt = "image sent with the question";
    el.append(img);
  }
  // A text node of its own: the message shows exactly the text, never HTML from the model.
  el.append(document.createTextNode(text));
  els.messages.append(el);
  scrollDown();
  return el;
}

function scrollDown() {
  els.messages.scrollTop = els.messages.scrollHeight;
}

function showError(message) {
  els.error.textContent = message;
  els.error.hidden = false;
}

function hideError() {
  els.error.textContent = "";
  els.error.hidden = true;
}

// Clear forgets the conversation and the image, stopping an answer that is still streaming.
function clearChat() {
  if (state.abort) state.abort.abort();
  state.abort = null;
  state.history = [];
  state.image = null;
  els.messages.replaceChildren();
  els.preview.hidden = true;
  els.preview.removeAttribute("src");
  els.send.disabled = false;
  hideError();
}

els.clear.addEventListener("click", () => {
  clearChat();
  els.input.value = "";  // so choosing the same file again fires "change"
  els.question.focus();
});

loadInfo();
