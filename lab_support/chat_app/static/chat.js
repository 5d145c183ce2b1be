// The browser side of POST /api/chat: send the conversation, show the answer as it streams in.
//
// EventSource cannot send a POST body, so the page reads the response with
// fetch() and a ReadableStream reader, and parses the events itself.

// The route rejects more than 50 messages, so the page sends only the latest 40.
const MAX_MESSAGES_SENT = 40;

/**
 * An incremental parser for a text/event-stream body, following the
 * event-stream rules of the HTML standard. Feed it decoded text in pieces of
 * any size with push(); it calls onEvent({event, data}) once per complete
 * event. Lines may end in LF, CRLF or CR, and an event, a line or a CRLF
 * pair may be split across pieces.
 */
export class SseParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.eventType = "";
    this.dataLines = [];
  }

  push(text) {
    this.buffer += text;
    this.#processLines(false);
  }

  /** Handle the end of the body. An event without its closing blank line is dropped, as the HTML standard requires. */
  end() {
    this.#processLines(true);
    this.buffer = "";
    this.eventType = "";
    this.dataLines = [];
  }

  #processLines(atEnd) {
    let start = 0;
    for (;;) {
      const cr = this.buffer.indexOf("\r", start);
      const lf = this.buffer.indexOf("\n", start);
      if (cr === -1 && lf === -1) break;

      let lineEnd;
      let next;
      if (cr !== -1 && (lf === -1 || cr < lf)) {
        // A CR as the last character may be the first half of a CRLF, so wait for the next piece.
        if (cr === this.buffer.length - 1 && !atEnd) break;
        lineEnd = cr;
        next = this.buffer[cr + 1] === "\n" ? cr + 2 : cr + 1;
      } else {
        lineEnd = lf;
        next = lf + 1;
      }
      this.#processLine(this.buffer.slice(start, lineEnd));
      start = next;
    }
    this.buffer = this.buffer.slice(start);
  }

  #processLine(line) {
    if (line === "") {
      this.#dispatch();
      return;
    }
    if (line.startsWith(":")) return; // a comment, such as a keep-alive ": ping"

    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);

    if (field === "event") this.eventType = value;
    else if (field === "data") this.dataLines.push(value);
    // "id" and "retry" serve EventSource reconnection, which a POST stream does not use.
  }

  #dispatch() {
    if (this.dataLines.length > 0) {
      this.onEvent({ event: this.eventType || "message", data: this.dataLines.join("\n") });
    }
    this.eventType = "";
    this.dataLines = [];
  }
}

/** Read a fetch() response body as Server-Sent Events; resolves when the body ends. */
export async function readEventStream(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder("utf-8");
  const parser = new SseParser(onEvent);
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    // stream: true holds back the first bytes of a character split across reads.
    parser.push(decoder.decode(value, { stream: true }));
  }
  parser.push(decoder.decode());
  parser.end();
}

/** Return the message of a JSON error response ({"detail": "..."}), or its status. */
async function errorMessage(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
  } catch {
    // Not JSON: fall back to the status below.
  }
  return `The server responded with HTTP ${response.status}.`;
}

function setUpPage(document) {
  const transcript = document.getElementById("transcript");
  const form = document.getElementById("composer");
  const input = document.getElementById("message");
  const sendButton = document.getElementById("send");
  const stopButton = document.getElementById("stop");
  const statusLine = document.getElementById("status");
  const errorLine = document.getElementById("error");

  const history = [];
  let controller = null;

  function setState(state) {
    document.body.dataset.state = state;
    const busy = state === "waiting" || state === "streaming";
    sendButton.disabled = busy;
    stopButton.disabled = !busy;
  }

  function addTurn(role, text) {
    const item = document.createElement("li");
    item.className = role;
    item.textContent = text; // textContent, never innerHTML: the model's text is not markup
    transcript.append(item);
    return item;
  }

  function showError(message) {
    errorLine.textContent = message;
    errorLine.hidden = false;
  }

  async function send(text) {
    const userMessage = { role: "user", content: text };
    const messages = [...history, userMessage].slice(-MAX_MESSAGES_SENT);
    addTurn("user", text);
    const answerItem = addTurn("assistant", "");
    errorLine.hidden = true;
    statusLine.textContent = "Waiting for the first token…";

    controller = new AbortController();
    setState("waiting");
    const started = performance.now();
    let firstTokenAt = null;
    let answer = "";
    let ending = null;

    try {
      const response = await fetch("/api/chat", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ messages }),
        signal: controller.signal,
      });
      if (!response.ok) {
        showError(await errorMessage(response));
        statusLine.textContent = "";
        setState("error");
        return;
      }

      setState("streaming");
      await readEventStream(response, ({ event, data }) => {
        const payload = JSON.parse(data);
        if (event === "message") {
          if (firstTokenAt === null) firstTokenAt = performance.now();
          answer += payload.delta;
          answerItem.textContent = answer;
          statusLine.textContent = `First token after ${Math.round(firstTokenAt - started)} ms…`;
        } else if (event === "done" || event === "error") {
          ending = { event, payload };
        }
      });

      const totalMs = Math.round(performance.now() - started);
      const ttft = firstTokenAt === null ? "no text" : `first token after ${Math.round(firstTokenAt - started)} ms`;
      statusLine.textContent = `${ttft}, complete after ${totalMs} ms`;
      if (ending?.event === "done") {
        history.push(userMessage, { role: "assistant", content: answer });
        setState("done");
      } else if (ending?.event === "error") {
        showError(ending.payload.message);
        setState("error");
      } else {
        showError("The connection closed before the answer was complete, so the text above may be cut short.");
        setState("incomplete");
      }
    } catch (error) {
      if (error.name === "AbortError") {
        statusLine.textContent = "Stopped.";
        setState("stopped");
      } else {
        showError(`The request failed: ${error.message}`);
        setState("error");
      }
    } finally {
      controller = null;
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || controller) return;
    input.value = "";
    send(text);
  });
  stopButton.addEventListener("click", () => controller?.abort());
  setState("idle");
}

if (typeof document !== "undefined" && document.getElementById("composer")) {
  setUpPage(document);
}
