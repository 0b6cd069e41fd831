// Light or dark: the system's choice (prefers-color-scheme, followed as it changes) until the
// page's toggle picks one, which localStorage keeps. Loaded in <head> without defer so that the
// page is painted in its colours from the start; style.css reads <html data-theme>.
"use strict";

const THEME_KEY = "llamita.theme";
const systemDark = window.matchMedia("(prefers-color-scheme: dark)");

function chosenTheme() {
  const stored = localStorage.getItem(THEME_KEY);
  return stored === "dark" || stored === "light" ? stored : (systemDark.matches ? "dark" : "light");
}

function showTheme() {
  document.documentElement.dataset.theme = chosenTheme();
}

function toggleTheme() {
  localStorage.setItem(THEME_KEY, chosenTheme() === "dark" ? "light" : "dark");
  showTheme();
}

showTheme();
systemDark.addEventListener("change", showTheme);
document.addEventListener("DOMContentLoaded", () => document.getElementById("theme").addEventListener("click", toggleTheme));
