// Device icons as inline SVG built with DOM calls (no external assets, no innerHTML).

const SVG = "http://www.w3.org/2000/svg";

// 24x24 outline drawings; stroke-only so they follow the text colour.
const SHAPES = {
  web: [
    ["circle", { cx: 12, cy: 12, r: 9 }],
    ["path", { d: "M3 12h18M12 3c2.5 2.7 3.8 5.7 3.8 9s-1.3 6.3-3.8 9c-2.5-2.7-3.8-5.7-3.8-9S9.5 5.7 12 3z" }],
  ],
  mobile: [
    ["rect", { x: 7, y: 2.5, width: 10, height: 19, rx: 2 }],
    ["path", { d: "M11 18.5h2" }],
  ],
  desktop: [
    ["rect", { x: 2.5, y: 4, width: 19, height: 12, rx: 1.5 }],
    ["path", { d: "M8 20h8M12 16v4" }],
  ],
  other: [
    ["rect", { x: 4, y: 4, width: 16, height: 16, rx: 3 }],
    ["path", { d: "M8.5 12h.01M12 12h.01M15.5 12h.01" }],
  ],
};

export const DEVICE_LABELS = { web: "web", mobile: "mobile", desktop: "desktop", other: "other device" };

/** An <svg> for a device type; decorative (the caller gives the accessible text). */
export function deviceIcon(type) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", "18");
  svg.setAttribute("height", "18");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  svg.setAttribute("fill", "none");
  svg.setAttribute("stroke", "currentColor");
  svg.setAttribute("stroke-width", "1.8");
  svg.setAttribute("stroke-linecap", "round");
  svg.setAttribute("stroke-linejoin", "round");
  for (const [tag, attributes] of SHAPES[type] || SHAPES.other) {
    const part = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes)) part.setAttribute(name, String(value));
    svg.append(part);
  }
  return svg;
}
