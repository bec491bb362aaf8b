// The demo video call: everyone in a room calls everyone else (a mesh of
// up to 4), with camera and microphone, a text chat and each peer's
// connection state. It is built only on the client library and /ice-servers.
//
// /demo/?room=NAME&peerId=ID joins at once (add &token=JWT when the server
// requires authentication). For automation: window.demo.peers() returns
// [{peerId, connectionState, framesDecoded}].

import { SignalingClient, connectPeer } from "../client/signaling-client.js";

/** Everyone in a room calls everyone: 4 people make 6 connections. */
const MAX_PARTICIPANTS = 4;
const STATS_INTERVAL_MS = 500;
/** Signaling events kept for window.demo.events(), newest last. */
const EVENTS_KEPT = 200;

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

/** peerId -> {peerId, session, pc, handle, tile, framesDecoded} */
const peers = new Map();
const chatLog = [];
const eventLog = [];
let client = null;
let roomId = null;
let me = null;
let session = null;
let localStream = null;
let iceServers = [];
let rebuildOnRejoin = false;
let statsTimer = null;

window.demo = {
  /** One entry per remote participant. */
  peers: () =>
    [...peers.values()].map((peer) => ({
      peerId: peer.peerId,
      connectionState: peer.pc.connectionState,
      framesDecoded: peer.framesDecoded,
      signalingState: peer.pc.signalingState,
      iceConnectionState: peer.pc.iceConnectionState,
    })),
  /** The last signaling messages and events, for troubleshooting: [{at, type, from, ...}]. */
  events: () => eventLog.slice(),
  /** The chat so far: [{from, text}]. */
  messages: () => chatLog.slice(),
  join: (room, peerId) => join(room, peerId),
  chat: (text) => sendChat(text),
  leave: () => leave(),
  get client() {
    return client;
  },
};

function setStatus(text) {
  $("status").textContent = text;
}

function say(from, text, system = false) {
  chatLog.push({ from, text });
  const item = document.createElement("li");
  if (system) {
    item.className = "system";
    item.textContent = text;
  } else {
    const name = document.createElement("span");
    name.className = "from";
    name.textContent = `${from}: `;
    item.append(name, document.createTextNode(text));
  }
  $("messages").append(item);
  item.scrollIntoView({ block: "end" });
}

async function openMedia() {
  const attempts = [
    { video: { width: 640, height: 480 }, audio: true },
    { video: { width: 640, height: 480 } },
    { audio: true },
  ];
  for (const constraints of attempts) {
    try {
      return await navigator.mediaDevices.getUserMedia(constraints);
    } catch (error) {
      console.warn("getUserMedia", constraints, error);
    }
  }
  return null;
}

async function loadIceServers(token) {
  try {
    const headers = token ? { authorization: `Bearer ${token}` } : {};
    const response = await fetch(new URL("../ice-servers", location.href), { headers });
    if (response.ok) return (await response.json()).iceServers || [];
  } catch (error) {
    console.warn("/ice-servers", error);
  }
  return [];
}

function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function join(room, peerId, token = params.get("token") || undefined) {
  if (client) return;
  roomId = room;
  me = peerId;
  $("join").hidden = true;
  $("call").hidden = false;
  $("self-name").textContent = me;
  setStatus("starting camera and microphone…");
  localStream = await openMedia();
  if (localStream) $("self-video").srcObject = localStream;
  else say(me, "no camera or microphone: you can see and hear the others only", true);
  iceServers = await loadIceServers(token);

  client = new SignalingClient(new URL("..", location.href).href, {
    peerId: me,
    token,
    deviceType: "browser",
    deviceInfo: { name: me, app: "signaling demo" },
  });
  client.on("*", (m) => {
    eventLog.push({ at: Date.now(), type: m.type, from: m.from || m.sender, state: m.state,
      userId: m.userId, code: m.code });
    if (eventLog.length > EVENTS_KEPT) eventLog.shift();
  });
  client.on("state", onState);
  client.on("join-success", onJoinSuccess);
  client.on("user-joined", (m) => m.roomId === roomId && addPeer(m.userId));
  client.on("user-left", (m) => {
    if (m.roomId !== roomId) return;
    removePeer(m.userId);
    say(m.userId, `${m.userId} left`, true);
  });
  client.on("hello", onHello);
  client.on("chat", (m) => m.roomId === roomId && say(m.sender || m.from, String(m.message ?? "")));
  client.on("error", (m) => say("server", `${m.code}: ${m.error}`, true));
  client.on("replaced", () => say(me, "this name was taken over by another tab", true));
  client.on("unauthorized", (m) => say(me, `refused: ${m.error}`, true));
  try {
    await client.connect();
    await client.joinRoom(roomId);
  } catch (error) {
    setStatus(`cannot join: ${error.message}`);
    return;
  }
  statsTimer = setInterval(updateStats, STATS_INTERVAL_MS);
}

function onState(event) {
  const words = { connecting: "connecting…", open: `in room ${roomId} as ${me}`,
    reconnecting: "connection lost, reconnecting…", closed: "disconnected" };
  setStatus(words[event.state] || event.state);
  // After a reconnection the server may have announced us gone and back:
  // every call is rebuilt once the room is joined again.
  if (event.state === "open" && event.reconnected) rebuildOnRejoin = true;
}

function onJoinSuccess(message) {
  if (message.roomId !== roomId) return;
  if (message.members.length >= MAX_PARTICIPANTS) {
    client.leaveRoom(roomId);
    setStatus(`room ${roomId} is full (${MAX_PARTICIPANTS} people)`);
    return;
  }
  if (rebuildOnRejoin) {
    rebuildOnRejoin = false;
    for (const peerId of [...peers.keys()]) removePeer(peerId);
  }
  // A new session id tells the others to drop any call they still have
  // with an earlier page or connection of ours.
  session = randomId();
  client.sendToRoom(roomId, { type: "hello", session });
  for (const peerId of message.members) addPeer(peerId, true);
  for (const peerId of [...peers.keys()]) {
    if (!message.members.includes(peerId)) removePeer(peerId);
  }
}

function onHello(message) {
  const peerId = message.sender || message.from;
  if (message.roomId !== roomId || !peerId || peerId === me) return;
  const peer = peers.get(peerId);
  if (peer && peer.session && peer.session !== message.session) removePeer(peerId);
  const current = peers.get(peerId) || addPeer(peerId);
  if (current) current.session = message.session;
}

// The one who joins calls everyone already in the room: its tracks go on
// the connection at once, so it offers first. Those already there add
// theirs when that offer arrives, and their answer carries them. Both
// sides offering at once (glare) is settled by connectPeer, but it costs a
// rollback, and Chromium sometimes never gathers candidates after one.
function addPeer(peerId, caller = false) {
  if (peerId === me) return null;
  if (peers.has(peerId)) return peers.get(peerId);
  if (peers.size >= MAX_PARTICIPANTS - 1) {
    say(peerId, `${peerId} cannot be added: at most ${MAX_PARTICIPANTS} people`, true);
    return null;
  }
  const pc = new RTCPeerConnection({ iceServers });
  const tile = makeTile(peerId);
  const peer = { peerId, session: null, pc, tile, framesDecoded: 0, handle: null };
  peers.set(peerId, peer);
  // Exactly one side of each pair is polite; the order of the ids decides.
  peer.handle = connectPeer(client, peerId, pc, { polite: me < peerId });
  peer.handle.onerror = (error) => {
    console.warn(`negotiation with ${peerId}`, error);
    eventLog.push({ at: Date.now(), type: "negotiation-error", from: peerId, error: String(error) });
  };
  if (caller) addMedia(pc);
  else {
    const onOffer = () => {
      if (pc.signalingState !== "have-remote-offer") return;
      pc.removeEventListener("signalingstatechange", onOffer);
      // Without a camera the answer receives on the offered transceivers.
      if (localStream) addMedia(pc);
    };
    pc.addEventListener("signalingstatechange", onOffer);
  }
  pc.addEventListener("track", (event) => {
    const video = tile.querySelector("video");
    if (video.srcObject !== event.streams[0]) video.srcObject = event.streams[0];
  });
  pc.addEventListener("connectionstatechange", () => showState(peer));
  showState(peer);
  say(peerId, `${peerId} is here`, true);
  return peer;
}

function addMedia(pc) {
  if (localStream) {
    for (const track of localStream.getTracks()) pc.addTrack(track, localStream);
  } else {
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("audio", { direction: "recvonly" });
  }
}

function removePeer(peerId) {
  const peer = peers.get(peerId);
  if (!peer) return;
  peers.delete(peerId);
  peer.handle.close();
  peer.pc.close();
  peer.tile.remove();
}

function makeTile(peerId) {
  const tile = document.createElement("figure");
  tile.className = "tile";
  const video = document.createElement("video");
  video.autoplay = true;
  video.playsInline = true;
  const caption = document.createElement("figcaption");
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = peerId;
  const state = document.createElement("span");
  state.className = "state";
  caption.append(name, state);
  tile.append(video, caption);
  $("videos").append(tile);
  return tile;
}

function showState(peer) {
  const state = peer.tile.querySelector(".state");
  state.textContent = peer.pc.connectionState;
  state.className = `state ${peer.pc.connectionState}`;
}

async function updateStats() {
  for (const peer of peers.values()) {
    try {
      const report = await peer.pc.getStats();
      let frames = 0;
      report.forEach((entry) => {
        if (entry.type === "inbound-rtp" && entry.kind === "video") frames += entry.framesDecoded || 0;
      });
      peer.framesDecoded = frames;
    } catch (error) {
      // closed meanwhile
    }
  }
}

function sendChat(text) {
  text = String(text).trim();
  if (!text || !client) return;
  client.sendToRoom(roomId, { type: "chat", message: text });
  say(me, text);
}

function leave() {
  if (!client) return;
  clearInterval(statsTimer);
  for (const peerId of [...peers.keys()]) removePeer(peerId);
  client.close();
  client = null;
  if (localStream) for (const track of localStream.getTracks()) track.stop();
  localStream = null;
  $("self-video").srcObject = null;
  $("call").hidden = true;
  $("join").hidden = false;
  setStatus("left the call");
}

$("join").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  join(String(form.get("room")).trim(), String(form.get("peerId")).trim());
});
$("chat-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = event.target.elements.text;
  sendChat(input.value);
  input.value = "";
});
$("leave").addEventListener("click", leave);

const joinForm = $("join").elements;
joinForm.room.value = params.get("room") || "";
joinForm.peerId.value = params.get("peerId") || `guest-${randomId().slice(0, 4)}`;
if (params.get("room") && params.get("peerId")) join(params.get("room"), params.get("peerId"));
